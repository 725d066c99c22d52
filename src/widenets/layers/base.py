"""The layer protocol: every layer has an infinite-width face and a finite-width face.

- ``kernel_fn(k)`` maps a :class:`~widenets.kernel.Kernel` to the Kernel after the layer;
- ``make_module(in_shape, ctx)`` builds the finite ``torch.nn.Module`` with the same
  weight and bias scales, parameterisation and initialiser;
- ``out_shape(in_shape)`` checks the input shape (channels first, no batch axis) and
  returns the output shape; it is where shape errors are raised, before any work.

Users call :meth:`Layer.kernel` and :meth:`Layer.build` on any layer or network.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import MISSING, dataclass, field, fields

import torch
from torch import nn

from widenets.kernel import Kernel

Shape = tuple[int, ...]


@dataclass
class BuildContext:
    """What a finite layer needs to create its parameters."""

    generator: torch.Generator
    dtype: torch.dtype = torch.float32
    device: torch.device | str | None = None
    init: object = None  # a widenets.init scheme, or None for Gaussian IID
    extras: dict = field(default_factory=dict)


class WeightedModule(nn.Module):
    """Base of the finite faces that hold weights (Dense, Conv, attention, DEQ, ...).

    ``reset_parameters(scheme, generator)`` redraws every parameter in place exactly as
    ``Layer.build`` draws it (same order, same scales), so ``widenets.init.apply`` needs no
    list of module types: it calls this method on every widenets module that has weights.
    """

    def reset_parameters(self, scheme=None, generator: torch.Generator | None = None) -> None:
        raise NotImplementedError


# ----- declared hyperparameters --------------------------------------------------------------
#: field metadata read by ``Layer.with_widths``
WIDTH = {"width": "hidden"}  # a hidden width: replaced, except in the readout
INNER_WIDTH = {"width": "inner"}  # always replaced (attention's key and value channels)
SEQUENCE = {"children": "sequence"}  # sub-layers applied one after the other
BRANCHES = {"children": "branches"}  # sub-layers applied side by side
VARIADIC = {"variadic": True}  # a tuple given as positional arguments (shown so in repr)


def declare(cls):
    """Class decorator: the annotated fields of a layer class are its hyperparameters.

    It makes the class a dataclass (the generated ``__init__`` calls ``__post_init__``,
    where the layer validates and normalises its fields) and leaves equality, hashing and
    repr to :class:`Layer`, which derive them from the fields. Derived attributes set in
    ``__post_init__`` (not annotated) are not hyperparameters.
    """
    return dataclass(eq=False, repr=False)(cls)


def _declared(cls) -> bool:
    """Whether this very class declares its hyperparameters (a subclass that is not itself
    decorated may hold undeclared state: it compares by identity)."""
    return "__dataclass_fields__" in cls.__dict__


def declares_hyperparameters(layer) -> bool:
    """Whether ``layer``'s class declares its hyperparameters (``@declare``)."""
    return _declared(type(layer))


class _ByIdentity:
    """A tensor-valued hyperparameter (a learnable scale) in an equality key: by identity."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __eq__(self, other):
        return isinstance(other, _ByIdentity) and other.obj is self.obj

    def __hash__(self):
        return id(self.obj)


def _same(value, default) -> bool:
    return value is default or (not isinstance(value, torch.Tensor) and value == default)


def _show(value) -> str:
    if callable(value) and not isinstance(value, Layer) and hasattr(value, "__name__"):
        return value.__name__
    return repr(value)


class Layer:
    """Base class of all widenets layers and networks.

    Hyperparameters are declared (``@declare``: dataclass fields), which gives every layer
    its repr, equality and hash (equal networks compute the same kernel: the key of
    ``KernelCache``) and one way to copy it, :meth:`replace`. Tensor-valued fields (a 0-dim
    ``w_std`` with gradients) compare and hash by identity; functions (``Elementwise``'s
    ``fn``) by the function object. A subclass that does not declare its fields compares
    by identity.
    """

    #: name used in error messages
    name: str = "Layer"
    #: whether ``kernel_fn`` needs a Gaussian input (``Kernel.is_gaussian``: the output of an
    #: affine layer); the base class raises otherwise, with ``gaussian_input_hint``
    requires_gaussian_input: bool = False
    gaussian_input_hint: str = "put an affine layer (Dense, Conv) before it."
    #: whether ``kernel_fn`` accepts a list of kernels (the branches after ``fan_out``);
    #: for the others the base class refuses one with a one-line error
    takes_branches: bool = False
    #: whether the layer's kernel needs the covariance of every pair of spatial positions
    #: (pooling, attention); if any layer of a network does, the network computes in the
    #: full pixel-pair layout, else in the cheap diagonal one (see ``widenets.kernel``)
    mixes_positions: bool = False
    #: whether ``kernel_fn`` accepts the packed pair layout (``Kernel.pairs``: only the
    #: pairs i <= j of a set with itself, listed). True unless a layer says it cannot: a map
    #: written with the record's layout API (``Kernel.map``, ``merge``, ``gather_pairs``,
    #: ``pair_variances``, ``scale_self_pairs``) handles it. A network computes packed
    #: when every layer in it does (``packs_pairs``)
    handles_packed_pairs: bool = True

    def __init_subclass__(cls, **kwargs):
        """A subclass's own ``kernel_fn`` is wrapped in the base class's input checks; a
        subclass that sets no ``name`` is called by its class name (in reprs and errors)."""
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__
        fn = cls.__dict__.get("kernel_fn")
        if fn is not None and not getattr(fn, "_checks_input", False):
            cls.kernel_fn = _checking_input(fn)

    # ----- the two faces, implemented by subclasses -------------------------------------
    def kernel_fn(self, k: Kernel | list[Kernel]) -> Kernel | list[Kernel]:
        raise NotImplementedError

    def make_module(self, in_shape, ctx: BuildContext) -> nn.Module:
        raise NotImplementedError

    def out_shape(self, in_shape):
        return in_shape

    # ----- structure hooks ----------------------------------------------------------------
    def pair_cost(self, in_shape) -> int:
        """Scalars held per (x1, x2) pair by this layer's kernel computation (for tiling)."""
        return 1

    def children(self) -> tuple[Layer, ...]:
        return ()

    def scaling_degree(self, degree):
        """Positive homogeneity of this layer's kernel map.

        If multiplying the network's inputs by s > 0 multiplies this layer's input by
        s^degree (its NNGP, NTK and variances by s^(2 degree)), for every value of the
        parameters, return the degree of its output likewise, or None if the output does
        not scale as a power of s. ``degree`` is a number, a list of them (one per branch)
        or None (the input itself does not scale). The kernel of a network of degree p
        satisfies K(s x1, s x2) = s^(2p) K(x1, x2), which lets ``Layer.kernel`` compute it
        on rescaled inputs and undo the scale exactly (by a power of two) when the inputs'
        Gram matrix would overflow.

        Default: a scale-invariant input (degree 0) gives a scale-invariant output, and
        anything else is not homogeneous. Linear layers without a bias return ``degree``,
        ReLU-like activations too, Monomial(d) ``d * degree``, Sign 0.
        """
        return 0 if _all_zero(degree) else None

    def needs_pixel_pairs(self) -> bool:
        """Whether this layer or any layer inside it mixes spatial positions."""
        return self.mixes_positions or any(c.needs_pixel_pairs() for c in self.children())

    def packs_pairs(self) -> bool:
        """Whether this layer and every layer inside it accept the packed pair layout."""
        return self.handles_packed_pairs and all(c.packs_pairs() for c in self.children())

    # ----- declared hyperparameters: repr, equality, hash, copies ------------------------------
    def hyperparameters(self) -> dict:
        """The declared hyperparameters by name (empty for an undeclared layer class)."""
        if not _declared(type(self)):
            return {}
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def replace(self, **changes) -> Layer:
        """A copy with some hyperparameters changed, validated as by the constructor, e.g.
        ``Dense(512).replace(w_std=2.0)``."""
        if not _declared(type(self)):
            raise TypeError(f"{type(self).__name__} does not declare its hyperparameters.")
        names = [f.name for f in fields(self)]
        unknown = [k for k in changes if k not in names]
        if unknown:
            raise ValueError(
                f"{type(self).__name__} has no hyperparameter {unknown[0]!r}; it has {names}."
            )
        new = copy.copy(self)
        for k, v in changes.items():
            setattr(new, k, v)
        post = getattr(new, "__post_init__", None)
        if post is not None:
            post()
        return new

    def _key(self) -> tuple:
        return tuple(
            _ByIdentity(v) if isinstance(v, torch.Tensor) else v
            for v in self.hyperparameters().values()
        )

    def __eq__(self, other) -> bool:
        if self is other:
            return True
        if type(other) is not type(self) or not _declared(type(self)):
            return False
        return self._key() == other._key()

    def __hash__(self) -> int:
        if not _declared(type(self)):
            return object.__hash__(self)
        return hash((type(self).__qualname__, self._key()))

    def __repr__(self) -> str:
        """One line: ``Name(required values, non-default field=value, ...)``."""
        if not _declared(type(self)):
            return type(self).name
        args = []
        for f in fields(self):
            if not f.repr:
                continue
            value = getattr(self, f.name)
            if f.metadata.get("variadic"):
                args += [repr(v) for v in value]
            elif f.default is MISSING and f.default_factory is MISSING:
                args.append(_show(value))
            elif not _same(value, f.default):
                args.append(f"{f.name}={_show(value)}")
        return f"{type(self).name}({', '.join(args)})"

    def with_widths(self, width: int, *, keep_readout: bool = True) -> Layer:
        """A copy whose hidden widths (every ``out_dim``/channel count) are ``width``.

        With ``keep_readout`` the last width-carrying layer (the readout) keeps its width.
        Widths are the fields declared with ``WIDTH`` / ``INNER_WIDTH`` metadata; sub-layers
        those declared ``SEQUENCE`` (walked from the output back) or ``BRANCHES``.
        """
        from widenets.errors import check_positive_int

        check_positive_int(width, "width")
        new, _ = self._rewidth(width, keep_readout)
        return new

    def _rewidth(self, width: int, keep: bool) -> tuple[Layer, bool]:
        """(copy with widths replaced, whether a readout is still to be kept)."""
        if not _declared(type(self)):
            return self, keep
        changes, carries_width = {}, False
        for f in fields(self):
            value, role = getattr(self, f.name), f.metadata.get("children")
            if role == "sequence":
                seq = value if isinstance(value, tuple) else (value,)
                new = []
                for layer in reversed(seq):
                    layer, keep = layer._rewidth(width, keep)
                    new.append(layer)
                new = tuple(reversed(new))
                changes[f.name] = new if isinstance(value, tuple) else new[0]
            elif role == "branches":
                out = [b._rewidth(width, keep) for b in value]
                changes[f.name] = tuple(b for b, _ in out)
                keep = all(k for _, k in out)
        for f in fields(self):
            kind = f.metadata.get("width")
            if kind == "inner" or (kind == "hidden" and not keep):
                changes[f.name] = width
            carries_width = carries_width or kind == "hidden"
        if carries_width:
            keep = False
        return (self.replace(**changes) if changes else self), keep

    # ----- what users call -----------------------------------------------------------------
    def kernel(
        self,
        x1,
        x2=None,
        *,
        get=("nngp", "ntk"),
        dtype: torch.dtype = torch.float64,
        batch_size: int | tuple[int, int] | None = None,
        progress: bool | None = None,
        pattern=None,
        mask_constant: float | None = None,
    ) -> Kernel:
        """Infinite-width NNGP and NTK of this network between inputs x1 and x2.

        Args:
            x1: (N1, C) or (N1, C, *spatial) inputs, channels first.
            x2: (N2, ...) inputs with the same per-example shape, or None for x1 itself.
            get: "nngp", "ntk" or both; the others are left None.
            dtype: floating dtype of the computation (float64 by default). In float32,
                float16 or bfloat16 the pairs whose closed forms are ill-conditioned in that
                precision (near-duplicate inputs, at an angle with sin(theta) < 1/4 at some
                nonlinearity) are recomputed in float64 and rounded, so every entry is within
                a few ulps of the float64 kernel rounded to ``dtype``.
            batch_size: tile size over x1 (and x2): an int for both or a pair. The result
                does not depend on it. None picks tiles that keep intermediates small.
            progress: show a progress bar over tiles (None: only for large kernels).
            pattern: graphs of the inputs, for ``Aggregate`` layers: ``(pattern1,
                pattern2)``, one graph per input of x1 and of x2 (dense (N, V, V) weights or
                (N, E, 2) edge lists, see ``Aggregate``), or one tensor when x2 is None.
            mask_constant: positions of spatial inputs whose every channel equals it (NaN
                allowed) are padding: the kernel is that of the inputs without them
                (``widenets.layers.masking``). None: nothing masked.

        Returns:
            A :class:`Kernel` with ``nngp`` and/or ``ntk`` of shape (N1, N2, ...).

        Raises:
            ValueError: bad arguments; NaN or inf in x1 or x2 (naming the row); inputs
                whose Gram matrix x.x / C does not fit ``dtype`` (inputs whose Gram would
                only overflow on the way are rescaled by a power of two, exactly; so is the
                whole kernel of a positively homogeneous network, see ``scaling_degree``).
            NonFiniteKernelError: the kernel came out NaN or inf; the message names the
                first layer whose output is not finite, whether it overflowed or produced
                NaN from finite values, and what to do.
        """
        from widenets.compute import evaluate_kernel

        return evaluate_kernel(
            self,
            x1,
            x2,
            get=get,
            dtype=dtype,
            batch_size=batch_size,
            progress=progress,
            pattern=pattern,
            mask_constant=mask_constant,
        )

    def build(
        self,
        input_shape,
        seed: int | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device=None,
        init=None,
        generator: torch.Generator | None = None,
        last_layer_variance_prior=None,
    ) -> nn.Module:
        """The finite-width network as a ``torch.nn.Module``.

        Args:
            input_shape: per-example input shape, channels first, e.g. (784,) or (3, 32, 32).
            seed: seed of the parameter draw (ignored if ``generator`` is given).
            dtype, device: of the parameters.
            init: a :mod:`widenets.init` scheme for the weights (Gaussian IID by default).
            last_layer_variance_prior: None, or a :class:`widenets.priors.InverseGamma`
                (or an (alpha, beta) pair): sigma^2 is drawn from it after the weights and
                the output is multiplied by sqrt(sigma^2) (a scale mixture of NNGPs); the
                module is then a :class:`widenets.priors.ScaledOutput` with ``variance``.
        """
        from widenets.errors import check_positive_int

        if last_layer_variance_prior is not None:
            from widenets.priors import as_variance_prior

            last_layer_variance_prior = as_variance_prior(last_layer_variance_prior)
        if isinstance(input_shape, int):
            input_shape = (input_shape,)
        if isinstance(input_shape, str):
            input_shape = None
        try:
            input_shape = tuple(int(s) for s in input_shape)
        except (TypeError, ValueError):
            raise ValueError(
                f"`input_shape` must be a tuple of positive ints, got {input_shape!r}."
            ) from None
        if not input_shape:
            raise ValueError("`input_shape` must have at least one axis (the features).")
        for s in input_shape:
            check_positive_int(s, "input_shape")
        self.out_shape(input_shape)  # shape errors before any parameter is drawn
        _check_build_args(seed, dtype, init, generator, device)
        if generator is None:
            generator = torch.Generator()
            if seed is None:
                generator.seed()
            else:
                generator.manual_seed(int(seed))
        ctx = BuildContext(generator=generator, dtype=dtype, device=device, init=init)
        module = self.make_module(input_shape, ctx)
        if last_layer_variance_prior is not None:
            from widenets.priors import apply_variance_prior

            module = apply_variance_prior(module, last_layer_variance_prior, generator)
        module.input_shape = input_shape
        return module


def _checking_input(fn):
    """``kernel_fn`` after the checks every layer shares: a list of branches only where
    ``takes_branches``, a Gaussian input where ``requires_gaussian_input``."""

    @functools.wraps(fn)
    def kernel_fn(self, k):
        if isinstance(k, list):
            if not self.takes_branches:
                raise ValueError(f"{self!r} takes a single input, got {len(k)} branches.")
        elif self.requires_gaussian_input and not k.is_gaussian:
            raise ValueError(f"{self!r} needs a Gaussian input: {self.gaussian_input_hint}")
        out = fn(self, k)
        if not isinstance(out, list) and out.mask1 is not None:
            check_mask_shape(self, out)
        return out

    kernel_fn._checks_input = True
    return kernel_fn


def check_mask_shape(layer, k: Kernel) -> None:
    """A ValueError when ``k``'s masks (``mask_constant``) no longer match its positions: the
    layer moved or removed positions without carrying the masks along."""
    cov = k.cov1
    positions = (cov.shape[0], *cov.shape[1::2]) if k.full_spatial else tuple(cov.shape)
    if tuple(k.mask1.shape) != positions:
        raise ValueError(
            f"{layer!r} does not support masked inputs (`mask_constant`): it maps positions "
            f"{tuple(k.mask1.shape[1:])} to {positions[1:]} without carrying the mask."
        )


def _check_build_args(seed, dtype, init, generator, device=None) -> None:
    """One-line errors for ``build``'s seed, dtype, init, generator and device."""
    import numpy as np

    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0
    ):
        raise ValueError(f"`seed` must be a non-negative integer or None, got {seed!r}.")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(
            f"`dtype` must be a floating torch dtype such as torch.float32, got {dtype!r}."
        )
    if init is not None and not callable(getattr(init, "weight", None)):
        raise ValueError(
            "`init` must be None or a widenets.init scheme (e.g. wn.init.Orthogonal(), "
            f"wn.init.Uniform(); any object with a weight(shape, fan_in, generator, dtype) "
            f"method), got {init!r}."
        )
    if device is not None:
        try:
            torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(
                f"`device` must be None or a torch device such as 'cpu' or 'cuda', got {device!r}."
            ) from None
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"`generator` must be a torch.Generator or None, got {generator!r}.")


def _all_zero(degree) -> bool:
    """Whether a scaling degree (a number or a list of them) is 0 everywhere."""
    if isinstance(degree, list):
        return bool(degree) and all(_all_zero(d) for d in degree)
    return degree is not None and degree == 0


def linear_degree(degree, has_bias: bool):
    """Scaling degree of a linear layer (Dense, Conv): ``degree`` without a bias; with
    one, only a scale-invariant input (degree 0) stays scale-invariant."""
    if isinstance(degree, list) or degree is None:
        return None
    if has_bias:
        return 0 if degree == 0 else None
    return degree
