"""GPyTorch kernels of infinitely wide networks, with learnable weight and bias scales.

:class:`NetworkKernel` wraps any widenets network's NNGP or NTK as a
``gpytorch.kernels.Kernel``. Every affine layer of the network (every layer with ``w_std`` and
``b_std`` attributes, e.g. :class:`~widenets.Dense`) gets the kernel's shared hyperparameters
``w_std`` and ``b_std``, constrained positive (softplus, GPyTorch's ``Positive``); layers built
without a bias (``b_std=None``) keep none. The recursion

    K' = w^2 K + b^2,   Theta' = K' + w^2 Theta     (Dense, NTK parameterisation)
    K' = E[phi(u) phi(v)],   Theta' = Theta E[phi'(u) phi'(v)]     (activations)

is evaluated on tensors that carry autograd, so the marginal likelihood of an ``ExactGP`` (or a
BoTorch ``SingleTaskGP``) is differentiated through every layer with respect to ``w_std``,
``b_std`` and the inputs. The float path of ``net.kernel`` is unchanged: the layers only take
their out-of-place, differentiable branch when their inputs track gradients.

A batch of inputs (..., n, d), such as BoTorch's (b, q, d) candidates, is evaluated in one
pass: the pairs of every batch element are listed together in the kernel record's packed
layout (:func:`batched_kernel`), which every fully-connected layer accepts.

Needs the optional extra ``pip install widenets[gpytorch]``::

    import gpytorch, widenets as wn
    from widenets.gpytorch import NetworkKernel

    net = wn.serial(wn.Dense(512, 1.5, 0.1), wn.Relu(), wn.Dense(1, 1.5, 0.1))
    covar = NetworkKernel(net, get="ntk")   # w_std, b_std start at 1.5, 0.1
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import Tensor

try:
    import gpytorch
    from gpytorch.constraints import Positive
    from gpytorch.kernels import Kernel as _GPyTorchKernel
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "widenets.gpytorch needs the optional package `gpytorch`: install it with "
        "`pip install widenets[gpytorch]`."
    ) from err

from widenets.compute import KernelWork, _spatial_factor, budgets, kernel_layout, same_inputs
from widenets.errors import NonFiniteKernelError, check_finite_rows
from widenets.executors import LocalExecutor, swap_pairs
from widenets.kernel import Kernel
from widenets.layers.base import Layer, declares_hyperparameters
from widenets.numerics import PreparedInputs, first_nonfinite, raise_nonfinite
from widenets.tiling import Tile, TilePlan, TileRequest, plan_tiles

#: initial value given to a zero ``b_std`` (a positive constraint cannot start at 0)
MIN_INITIAL_STD = 1e-4


def _affine_layers(layer: Layer):
    """Every layer of the tree with ``w_std`` and ``b_std`` attributes, in order."""
    if hasattr(layer, "w_std") and hasattr(layer, "b_std"):
        yield layer
    for child in layer.children():
        yield from _affine_layers(child)


def with_scales(layer: Layer, w_std: Tensor, b_std: Tensor) -> Layer:
    """A copy of the network whose affine layers use the (0-dim tensor) ``w_std``, ``b_std``.

    Layers without a bias keep none. The copy shares every other layer object; only the
    attributes holding sub-layers (a layer or a tuple of layers) are replaced.
    """
    new = copy.copy(layer)
    # sub-layers among the declared hyperparameters (all attributes of an undeclared class)
    fields = layer.hyperparameters() if declares_hyperparameters(layer) else vars(layer)
    for name, value in fields.items():
        if isinstance(value, Layer):
            setattr(new, name, with_scales(value, w_std, b_std))
        elif isinstance(value, tuple) and value and all(isinstance(v, Layer) for v in value):
            setattr(new, name, tuple(with_scales(v, w_std, b_std) for v in value))
    if hasattr(layer, "w_std") and hasattr(layer, "b_std"):
        new.w_std = w_std
        if layer.b_std is not None:
            new.b_std = b_std
    return new


def differentiable_kernel(net: Layer, x1: Tensor, x2: Tensor | None = None, get: str = "ntk"):
    """``getattr(net.kernel(x1, x2), get)`` in one tile, with autograd through every layer.

    Unlike :meth:`Layer.kernel` (tiled, for large float kernels) this evaluates the whole
    (N1, N2) block at once in the inputs' dtype, so it is meant for GP-sized data sets. The
    tile is planned (``widenets.tiling``: one block, one tile) and computed
    (``compute.KernelWork``, no float64 refinement) as ``net.kernel``'s tiles are.
    """
    # NaN or inf in an input: an error naming the row (a GP's marginal likelihood would
    # otherwise come out NaN with no hint why)
    check_finite_rows(x1.detach(), "x1")
    if x2 is not None:
        check_finite_rows(x2.detach(), "x2")
    same = same_inputs(x1, x2)
    x2 = x1 if same else x2
    net.out_shape(tuple(x1.shape[1:]))
    k, full = _one_tile(net, x1, x2, same, get)
    out = getattr(k, get)
    bad = first_nonfinite(out.detach())
    if bad is not None:  # which layer, overflow or NaN, and what to do
        i, j = bad[0], bad[1]
        with torch.no_grad():
            raise_nonfinite(
                net,
                x1.detach(),
                x2.detach(),
                i,
                j,
                same and i == j,
                full_spatial=full,
                field="NTK" if get == "ntk" else "NNGP kernel",
                same_set=same,
            )
    return out


def _one_tile(net: Layer, x1: Tensor, x2: Tensor, same: bool, get: str) -> tuple[Kernel, bool]:
    """The network's kernel of (x1, x2) as one tile, and whether it ran in the full
    pixel-pair layout: planned with ``batch_size=(n1, n2)`` (one block, one tile; the
    layout is ``net.kernel``'s for a given batch size: "full" or "diagonal"), computed by
    ``compute.KernelWork`` on the inputs as given (autograd kept; no rescaling, no float64
    refinement) and kept by a :class:`_TileKeeper`."""
    n1, n2 = x1.shape[0], x2.shape[0]
    in_shape = tuple(x1.shape[1:])
    layout = kernel_layout(net, in_shape, same, (n1, n2))
    full = layout == "full"
    cost = net.pair_cost(in_shape) * _spatial_factor(in_shape, full)
    request = TileRequest(n1, n2, same, layout, cost, len(in_shape) > 1, (n1, n2))
    plan = plan_tiles(request, budgets())
    inputs = PreparedInputs(x1, None if same else x2, x1, None if same else x2)
    work = KernelWork(net, inputs, (get,), x1.dtype, same, full, cost, refine=False)
    sink = _TileKeeper(plan)
    LocalExecutor(1).run(plan, work, sink, progress=False)
    return sink.finish(), full


class _TileKeeper:
    """A sink (``widenets.executors.TileSink``) for a plan of one tile that keeps the
    tile's tensors as they are (no buffer written in place: autograd flows through). For a
    set with itself (``TilePlan.square``) the lower triangle is taken from the transposed
    upper one, out of place, so the kernel is exactly symmetric as ``net.kernel``'s is."""

    def __init__(self, plan: TilePlan):
        if plan.n_tiles != 1 or plan.layout == "packed":
            raise RuntimeError(f"internal error: expected one grid tile, got {plan.n_tiles}.")
        self.plan = plan
        self.kernel: Kernel | None = None

    def write(self, tile: Tile, k: Kernel) -> None:
        self.kernel = k

    def finish(self) -> Kernel:
        k, n = self.kernel, self.plan.n1
        if not self.plan.square or n < 2:
            return k
        lower = torch.ones(n, n, dtype=torch.bool, device=k.nngp.device).tril(-1)

        def symmetric(t: Tensor | None) -> Tensor | None:
            if t is None:
                return None
            mask = lower.reshape(n, n, *(1,) * (t.ndim - 2))
            return torch.where(mask, swap_pairs(t, k.full_spatial), t)

        return k.replace(nngp=symmetric(k.nngp), ntk=symmetric(k.ntk))


class NetworkKernel(_GPyTorchKernel):
    """The NNGP or NTK of a widenets network as a GPyTorch kernel.

    Args:
        net: any widenets network (a ``Layer``); inputs are GPyTorch's (..., n, d) matrices,
            so the network takes examples of shape (d,).
        get: "ntk" (default) or "nngp".
        w_std, b_std: initial values of the shared hyperparameters; None takes them from the
            network's first affine layer.
        w_std_constraint, b_std_constraint: GPyTorch constraints (default ``Positive()``).
        w_std_prior, b_std_prior: GPyTorch priors on the scales (default none), added to the
            marginal likelihood by ``ExactMarginalLogLikelihood`` as for a lengthscale prior;
            see docs/bayesian_optimisation.md for why a prior on ``w_std`` helps.
        **kwargs: passed to ``gpytorch.kernels.Kernel`` (``batch_shape``, ``active_dims``...).
            With ``ard_num_dims=d`` the kernel also learns a lengthscale per input feature
            (starting at 1; ``lengthscale_prior``, ``lengthscale_constraint`` as in GPyTorch):
            the network sees x / lengthscale.

    The kernel's output is that of a single output channel; wrap it in a ``ScaleKernel`` for
    a separate output scale (``w_std`` of the readout already sets one).
    """

    has_lengthscale = False

    def __init__(
        self,
        net: Layer,
        get: str = "ntk",
        w_std: float | None = None,
        b_std: float | None = None,
        w_std_constraint=None,
        b_std_constraint=None,
        w_std_prior=None,
        b_std_prior=None,
        **kwargs,
    ):
        if not isinstance(net, Layer):
            raise TypeError(f"`net` must be a widenets network (Layer), got {type(net).__name__}.")
        if get not in ("nngp", "ntk"):
            raise ValueError(f'`get` must be "nngp" or "ntk", got {get!r}.')
        affine = list(_affine_layers(net))
        if not affine:
            raise ValueError(
                "`net` has no layer with w_std and b_std (e.g. Dense): nothing to learn."
            )
        if w_std is None:
            w_std = float(affine[0].w_std)
        if b_std is None:
            b_std = next((float(a.b_std) for a in affine if a.b_std is not None), 0.0)
        # with ard_num_dims, a learnable lengthscale per input feature (GPyTorch's own)
        self.has_lengthscale = kwargs.get("ard_num_dims") is not None
        super().__init__(**kwargs)
        if self.has_lengthscale:
            self.lengthscale = 1.0
        self.net = net
        self.get = get
        for name, init, constraint in (
            ("w_std", w_std, w_std_constraint),
            ("b_std", b_std, b_std_constraint),
        ):
            constraint = Positive() if constraint is None else constraint
            self.register_parameter(
                f"raw_{name}", torch.nn.Parameter(torch.zeros(*self.batch_shape, 1, 1))
            )
            self.register_constraint(f"raw_{name}", constraint)
            self._set(name, max(float(init), MIN_INITIAL_STD))
        for name, prior in (("w_std", w_std_prior), ("b_std", b_std_prior)):
            if prior is None:
                continue
            if not isinstance(prior, gpytorch.priors.Prior):
                raise TypeError(
                    f"`{name}_prior` must be a gpytorch.priors.Prior (e.g. "
                    f"LogNormalPrior(0.4, 0.5)) or None, got {type(prior).__name__}."
                )
            self.register_prior(
                f"{name}_prior",
                prior,
                lambda m, name=name: getattr(m, name),
                lambda m, v, name=name: m._set(name, v),
            )

    def _set(self, name: str, value) -> None:
        raw = getattr(self, f"raw_{name}")
        value = torch.as_tensor(value, dtype=raw.dtype, device=raw.device).expand_as(raw)
        constraint = getattr(self, f"raw_{name}_constraint")
        self.initialize(**{f"raw_{name}": constraint.inverse_transform(value)})

    @property
    def w_std(self) -> Tensor:
        return self.raw_w_std_constraint.transform(self.raw_w_std)

    @w_std.setter
    def w_std(self, value) -> None:
        self._set("w_std", value)

    @property
    def b_std(self) -> Tensor:
        return self.raw_b_std_constraint.transform(self.raw_b_std)

    @b_std.setter
    def b_std(self, value) -> None:
        self._set("b_std", value)

    def network(self, batch_index: tuple[int, ...] = ()) -> Layer:
        """The network with the current hyperparameters (of one batch element)."""
        w = self.w_std[batch_index].reshape(())
        b = self.b_std[batch_index].reshape(())
        return with_scales(self.net, w, b)

    def forward(self, x1: Tensor, x2: Tensor, diag: bool = False, last_dim_is_batch=False, **_):
        """k(x1, x2) of shape (..., n1, n2), or its diagonal (..., n) with ``diag``.

        Every batch element is evaluated in one pass of the network's kernel map (the pairs of
        all batch elements listed together, :func:`batched_kernel`); hyperparameters with a
        batch shape of their own take one pass per distinct value. ``last_dim_is_batch``
        treats each input feature as a separate batch element of 1-D inputs, (..., d, n1, n2).
        """
        same = x1 is x2
        if self.has_lengthscale:  # x / lengthscale per feature
            x1 = x1.div(self.lengthscale)
            x2 = x1 if same else x2.div(self.lengthscale)
        if last_dim_is_batch:
            x1 = x1.transpose(-1, -2).unsqueeze(-1)
            x2 = x2.transpose(-1, -2).unsqueeze(-1)
        same = same or (x1.shape == x2.shape and torch.equal(x1, x2))
        if diag and not same and x1.shape[-2] != x2.shape[-2]:
            raise ValueError(
                f"`diag=True` needs as many rows in x1 as in x2, got {x1.shape[-2]} and "
                f"{x2.shape[-2]}."
            )
        nb = len(self.batch_shape)
        hyper = [i for i, s in enumerate(self.batch_shape) if s > 1]
        if not hyper:  # shared hyperparameters: one pass for the whole batch
            net = self.network(tuple(0 for _ in range(nb)))
            return batched_kernel(net, x1, None if same else x2, self.get, diag=diag)
        # one pass per distinct value of the hyperparameters: their batch axes moved first
        batch = torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2], self.batch_shape)
        axes = [len(batch) - nb + i for i in hyper]
        front = list(range(len(axes)))
        x1b = x1.expand(*batch, *x1.shape[-2:]).movedim(axes, front)
        x2b = x2.expand(*batch, *x2.shape[-2:]).movedim(axes, front)
        sizes = [batch[a] for a in axes]
        out = []
        for idx in _indices(sizes):
            full = [0] * nb
            for i, v in zip(hyper, idx, strict=True):
                full[i] = v
            k = batched_kernel(
                self.network(tuple(full)), x1b[idx], None if same else x2b[idx], self.get, diag
            )
            out.append(k)
        stacked = torch.stack(out).reshape(*sizes, *out[0].shape)
        return stacked.movedim(front, axes)


def _indices(shape) -> list[tuple[int, ...]]:
    return list(itertools.product(*(range(s) for s in shape)))


def _compact(x: Tensor) -> Tensor:
    """x without the repeats of its broadcast (stride-0) batch axes: each kept at size 1."""
    for axis in range(x.ndim - 2):
        if x.stride(axis) == 0 and x.shape[axis] > 1:
            x = x.narrow(axis, 0, 1)
    return x


def batched_kernel(
    net: Layer, x1: Tensor, x2: Tensor | None = None, get: str = "ntk", diag: bool = False
) -> Tensor:
    """``getattr(net.kernel(x1[b], x2[b]), get)`` for every batch index b at once.

    x1 is (..., n1, d) and x2 (..., n2, d) (batch axes broadcast; None: x1 itself); the result
    is (..., n1, n2), or its diagonal (..., n1) with ``diag``. A network whose layers all
    accept the packed pair layout (every fully-connected network) gets one list of all the
    pairs (x1[b, i], x2[b, j]), each naming its two inputs in one set of the distinct rows, so
    one pass of the kernel map serves the whole batch; any other network is evaluated one
    batch element at a time (:func:`differentiable_kernel`). Differentiable in the network's
    tensor-valued scales and in the inputs.
    """
    same = x2 is None
    x2 = x1 if same else x2
    for x, name in ((x1, "x1"), (x2, "x2")):
        if x.ndim < 2:
            raise ValueError(f"`{name}` must be (..., n, d), got shape {tuple(x.shape)}.")
    if x1.shape[-1] != x2.shape[-1]:
        raise ValueError(
            f"`x1` and `x2` must have the same number of features, got {x1.shape[-1]} "
            f"and {x2.shape[-1]}."
        )
    batch = torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2])
    n1, n2 = x1.shape[-2], x2.shape[-2]
    if not net.packs_pairs():
        return _looped_kernel(net, x1, None if same else x2, get, diag, batch)
    net.out_shape((x1.shape[-1],))
    a1, a2 = _compact(x1), _compact(x2)
    # the distinct rows, one set: x1's rows then (unless x2 is x1) x2's
    rows1 = a1.reshape(-1, a1.shape[-1])
    rows = rows1 if same else torch.cat([rows1, a2.reshape(-1, a2.shape[-1])])
    check_finite_rows(rows1.detach(), "x1")
    if not same:
        check_finite_rows(rows[rows1.shape[0] :].detach(), "x2")
    # the work object of net.kernel's tiles over the distinct rows, as one set: their
    # variances, and the layers folded over the listed pairs (which must stay listed)
    d = x1.shape[-1]
    inputs = PreparedInputs(rows, None, rows, None)
    work = KernelWork(net, inputs, (get,), rows.dtype, True, False, net.pair_cost((d,)), False)
    var = work.var1
    ids1 = torch.arange(rows1.shape[0], device=rows.device).reshape(a1.shape[:-1])
    ids2 = (
        ids1
        if same
        else torch.arange(rows1.shape[0], rows.shape[0], device=rows.device).reshape(a2.shape[:-1])
    )
    if diag:
        i = ids1.expand(*batch, n1).reshape(-1)
        j = ids2.expand(*batch, n2).reshape(-1)
        gram = var if same else (a1 * a2).sum(-1) / d
        out_shape = (*batch, n1)
    else:
        i = ids1.unsqueeze(-1).expand(*batch, n1, n2).reshape(-1)
        j = ids2.unsqueeze(-2).expand(*batch, n1, n2).reshape(-1)
        gram = a1.matmul(a2.transpose(-1, -2)) / d
        if same:  # an input with itself: its variance, exactly
            gram = torch.diagonal_scatter(gram, var[ids1], dim1=-2, dim2=-1)
        out_shape = (*batch, n1, n2)
    if same and diag:
        nngp = var[i]
    else:
        nngp = gram.expand(out_shape).reshape(-1)
    nngp = nngp.unsqueeze(1)
    k = Kernel(
        nngp=nngp,
        ntk=nngp.new_zeros(()).expand_as(nngp) if get == "ntk" else None,
        cov1=var,
        cov2=var,
        shape1=(d,),
        shape2=(d,),
        x1_is_x2=True,
        pairs=(i, j),
    )
    k, _ = work.fold(k)
    out = getattr(k, get)[:, 0].reshape(out_shape)
    if first_nonfinite(out.detach()) is not None:  # name the layer, with the looped path
        with torch.no_grad():
            _looped_kernel(net, x1.detach(), None if same else x2.detach(), get, diag, batch)
        raise NonFiniteKernelError(f"the batched {get.upper()} came out NaN or inf.")
    return out


def _looped_kernel(net, x1, x2, get, diag, batch) -> Tensor:
    """:func:`batched_kernel` one batch element at a time (networks that cannot list pairs)."""
    same = x2 is None
    x1b = x1.expand(*batch, *x1.shape[-2:])
    x2b = x1b if same else x2.expand(*batch, *x2.shape[-2:])
    out = []
    for idx in _indices(batch):
        if diag and not same:
            a, b = x1b[idx], x2b[idx]
            k = torch.stack(
                [
                    differentiable_kernel(net, a[r : r + 1], b[r : r + 1], get)[0, 0]
                    for r in range(a.shape[0])
                ]
            )
        else:
            k = differentiable_kernel(net, x1b[idx], None if same else x2b[idx], get)
            k = k.diagonal() if diag else k
        out.append(k)
    return torch.stack(out).reshape(*batch, *out[0].shape)


__all__ = ["NetworkKernel", "batched_kernel", "differentiable_kernel", "gpytorch", "with_scales"]
