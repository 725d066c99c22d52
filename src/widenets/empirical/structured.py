"""Structured derivatives for affine and normalisation layers (Novak et al. 2022, "Fast
Finite Width Neural Tangent Kernel").

An affine layer maps its input patches u_l (positions l = 1..L, fan_in values each) to
y_l = s_w W u_l + s_b b (out values each). Writing g_a,l = d f_a / d y_l for output a,

    d f_a / d W = s_w sum_l g_a,l u_l^T,      d f_a / d b = s_b sum_l g_a,l,

so the layer's NTK contribution never needs the (out x fan_in) Jacobian per output:

    Theta_W(x1, x2)[a, b] = s_w^2 sum_{l, m} (u_l(x1) . u_m(x2)) (g_a,l(x1) . g_b,m(x2)).

With one position (dense layers on vectors) this is a product of two Gram matrices,
O(N^2 (fan_in + out)) instead of O(N^2 fan_in out). With many positions (convolutions)
the sum runs over every pair of positions (weights are shared across positions), and the
layer is either contracted position pair by position pair ("pairwise", cost
N^2 L^2 (fan_in + O out)) or its per-example weight gradient sum_l g u^T is formed from
the factors and contracted ("materialised", N O L out fan_in + N^2 O out fan_in),
whichever is cheaper. A convolution forms that gradient by one grouped convolution
backward (groups = examples) instead of unfolding its input into patches.

A normalisation layer in eval mode (``BatchNorm`` with running statistics, ``LayerNorm``,
``GroupNorm``) is y = gamma * xhat + beta with xhat the normalised input, so
d f_a / d gamma = sum g_a * xhat and d f_a / d beta = sum g_a over the positions that
share a parameter: small per-example Jacobians, formed from g without a weight pass.

The g's of all layers come from reverse passes with respect to a zero "probe" added to
each layer's output, never with respect to the weights. Two ways:

- batched: forward passes over whole blocks of examples and one reverse pass per output,
  as in training (fast convolution kernels, no per-example weight gradients). It needs
  every differentiated parameter to sit in a supported layer and the model to treat the
  examples of a batch independently (checked on a few examples for every method, see
  :mod:`widenets.empirical._checks`). Traced kernels are streamed, one output at a time, so
  neither the Jacobian nor the g's of all outputs are ever held: either one forward pass
  per tile, each layer's g contracted into the tile as soon as the reverse pass reaches
  it ("streamed"), or one output's features of each block formed in chunks of examples,
  a forward and a reverse pass each, then contracted ("per_output", which holds those
  features instead of a whole block's activations). Untraced kernels hold the g's of all
  outputs of a block ("batched"). Where the g's of several outputs are small, their
  reverse passes run as one pass over a batch of one-hot cotangents (up to
  REVERSE_BATCH outputs, REVERSE_SCALARS scalars of g's).
- per example (``vmap(jacrev)``, "per_example"), for any model; parameters outside
  supported layers get their Jacobians in the same pass.

:mod:`widenets.empirical.cost` picks the variant (``explain`` prints it).

Supported layers: ``nn.Linear`` (over the last axis), ``nn.Conv1d`` / ``nn.Conv2d``
(groups 1, any padding mode, stride, dilation), eval-mode ``nn.BatchNorm1d/2d/3d`` (with
running statistics), ``nn.LayerNorm``, ``nn.GroupNorm`` (affine), and modules following
the widenets protocol: float attributes ``weight_scale`` and ``bias_scale``
(y = s_w W * x + s_b b), a channels-first output (N, out, *spatial), and either a method
``ntk_patches(x)`` returning (N, L, fan_in) patches of the input ``x`` in
``weight.reshape(out, -1)`` order, or the layout of widenets' ``DenseModule`` (channel
axis 1) or ``ConvModule`` (attributes ``kernel_size``, ``stride``, ``pads``,
``circular``). Every layer is checked on one example (its output recomputed from the
formula above); a layer that fails the check, or is called more than once per forward
pass (weight sharing), is left to the Jacobian fallback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import jacrev, vmap
from torch.utils._pytree import tree_map

from widenets.empirical._common import Batch, call
from widenets.empirical._methods import contract


def _unfold(x: Tensor, kernel, stride, dilation) -> Tensor:
    """(N, C, *sp) -> (N, L, C * prod(kernel)) patches for 1-D or 2-D spatial inputs."""
    if x.ndim == 3:  # 1-D: treat as height 1
        x = x.unsqueeze(2)
        kernel, stride, dilation = (1, kernel[0]), (1, stride[0]), (1, dilation[0])
    return F.unfold(x, kernel, dilation=dilation, stride=stride).transpose(1, 2)


def _conv_weight_grads(h: Tensor, g: Tensor, kernel, stride, dilation) -> Tensor:
    """Per-example weight gradients of an unpadded convolution (groups 1):
    h (n, C, *sp) the (padded) input, g (n, out, *sp_out) the output cotangents;
    (n, out * C * prod(kernel)) in ``weight.reshape(out, -1)`` order, by one convolution
    backward with the examples as groups."""
    n, c, out = h.shape[0], h.shape[1], g.shape[1]
    k = len(kernel)
    dummy = h.new_empty((n * out, c, *kernel))  # only its shape is read
    dw = torch.ops.aten.convolution_backward(
        g.reshape(1, n * out, *g.shape[2:]),
        h.reshape(1, n * c, *h.shape[2:]),
        dummy,
        None,
        tuple(stride),
        (0,) * k,
        tuple(dilation),
        False,
        (0,) * k,
        n,
        (False, True, False),
    )[1]
    return dw.reshape(n, -1)


def _rows_channels_first(g: Tensor) -> Tensor:
    """(n, O, out, *spatial) -> (n, O, L, out)."""
    return g.reshape(g.shape[0], g.shape[1], g.shape[2], -1).transpose(2, 3)


@dataclass
class Adapter:
    sw: float
    sb: float
    patches: object  # (layer input) -> (n, L, fan_in)
    rows: object  # (n, O, *y_shape) -> (n, O, L, out)
    # (layer input, g of one output (n, *y_shape)) -> (n, out * fan_in), before s_w;
    # None: from patches and rows
    weight_grads: object = None


@dataclass
class NormAdapter:
    normalise: object  # (module, layer input) -> xhat, the shape of the output
    param_axes: tuple  # axes of the per-example output that the parameters index


def _scale(v) -> float:
    return float(v.detach()) if isinstance(v, Tensor) else float(v)


def _conv_adapter(pad_fn, k, s, d, sw=1.0, sb=1.0) -> Adapter:
    def patches(h):
        return _unfold(pad_fn(h), k, s, d)

    def weight_grads(h, g):
        return _conv_weight_grads(pad_fn(h), g, k, s, d)

    return Adapter(sw, sb, patches, _rows_channels_first, weight_grads)


def adapter(m: nn.Module) -> Adapter | NormAdapter | None:
    """How to read module m as an affine map of patches, or None if unsupported."""
    w = getattr(m, "weight", None)
    if not isinstance(w, Tensor):
        return None
    if type(m).forward is nn.Linear.forward and isinstance(m, nn.Linear):
        return Adapter(
            1.0,
            1.0,
            lambda h: h.reshape(h.shape[0], -1, h.shape[-1]),
            lambda g: g.reshape(g.shape[0], g.shape[1], -1, g.shape[-1]),
        )
    if isinstance(m, (nn.Conv1d, nn.Conv2d)) and type(m).forward in (
        nn.Conv1d.forward,
        nn.Conv2d.forward,
    ):
        if m.groups != 1:
            return None
        mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
        pad = m._reversed_padding_repeated_twice

        def pad_fn(h, pad=pad, mode=mode):
            return F.pad(h, pad, mode=mode) if any(pad) else h

        return _conv_adapter(pad_fn, m.kernel_size, m.stride, m.dilation)
    norm = _norm_adapter(m)
    if norm is not None:
        return norm
    if not (hasattr(m, "weight_scale") and hasattr(m, "bias_scale")):
        return None
    sw, sb = _scale(m.weight_scale), _scale(m.bias_scale)
    if callable(getattr(m, "ntk_patches", None)):
        return Adapter(sw, sb, m.ntk_patches, _rows_channels_first)
    if w.ndim == 2:  # DenseModule: affine map over the channel axis 1

        def dense_patches(h):
            return h.reshape(h.shape[0], h.shape[1], -1).transpose(1, 2)

        return Adapter(sw, sb, dense_patches, _rows_channels_first)
    if w.ndim in (3, 4) and all(hasattr(m, a) for a in ("kernel_size", "stride", "pads")):
        from widenets.layers._spatial import pad_input as _pad

        pads, circular = tuple(tuple(p) for p in m.pads), bool(getattr(m, "circular", False))
        k, s = tuple(m.kernel_size), tuple(m.stride)

        def widenets_pad(h, pads=pads, circular=circular):
            return _pad(h, pads, circular)

        return _conv_adapter(widenets_pad, k, s, (1,) * len(k), sw, sb)
    return None


def _norm_adapter(m: nn.Module) -> NormAdapter | None:
    """Eval-mode BatchNorm with running statistics, LayerNorm, GroupNorm (affine)."""
    bn = nn.modules.batchnorm._BatchNorm
    if isinstance(m, bn) and type(m).forward is bn.forward:
        if not m.affine or m.training or m.running_mean is None or m.running_var is None:
            return None  # batch statistics: not a per-example map

        def bn_normalise(mod, h):
            shape = (1, -1) + (1,) * (h.ndim - 2)
            mean, var = mod.running_mean.view(shape), mod.running_var.view(shape)
            return (h - mean) / torch.sqrt(var + mod.eps)

        return NormAdapter(bn_normalise, (0,))
    if isinstance(m, nn.LayerNorm) and type(m).forward is nn.LayerNorm.forward:
        if not m.elementwise_affine:
            return None
        k = len(m.normalized_shape)

        def ln_normalise(mod, h):
            return F.layer_norm(h, mod.normalized_shape, None, None, mod.eps)

        return NormAdapter(ln_normalise, ("last", k))
    if isinstance(m, nn.GroupNorm) and type(m).forward is nn.GroupNorm.forward:
        if not m.affine:
            return None

        def gn_normalise(mod, h):
            return F.group_norm(h, mod.num_groups, None, None, mod.eps)

        return NormAdapter(gn_normalise, (0,))
    return None


@dataclass
class LayerSpec:
    key: str  # module name
    module: nn.Module
    weight: str | None  # full name of the weight if it is differentiated
    bias: str | None
    adapter: Adapter | NormAdapter
    y_shape: tuple  # per-example output shape
    L: int  # positions (1 for a normalisation layer)
    fan_in: int  # (normalisation: values per parameter)
    out: int  # (normalisation: parameters per weight)

    @property
    def norm(self) -> bool:
        return isinstance(self.adapter, NormAdapter)


def _norm_reduce_axes(spec_or_axes, y_ndim: int) -> tuple:
    """Axes of a per-example output (without the example axis) summed over."""
    axes = spec_or_axes
    if axes and axes[0] == "last":
        keep = set(range(y_ndim - axes[1], y_ndim))
    else:
        keep = set(axes)
    return tuple(i for i in range(y_ndim) if i not in keep)


def norm_jacobians(spec: LayerSpec, g: Tensor, xhat: Tensor, lead: int) -> dict:
    """{name: (*g.shape[:lead], params)} Jacobians of a normalisation layer's gamma, beta
    from g (*lead axes, *y_shape) and xhat (n, *y_shape); ``lead`` is 1 (examples) or 2
    (examples, outputs)."""
    red = tuple(lead + i for i in _norm_reduce_axes(spec.adapter.param_axes, len(spec.y_shape)))
    out = {}
    if spec.weight is not None:
        x = xhat if lead == 1 else xhat.unsqueeze(1)
        jw = (g * x).sum(red) if red else g * x
        out[spec.weight] = jw.reshape(*g.shape[:lead], -1)
    if spec.bias is not None:
        jb = g.sum(red) if red else g
        out[spec.bias] = jb.reshape(*g.shape[:lead], -1)
    return out


def _check_affine(m, ad: Adapter, h: Tensor, y: Tensor, u: Tensor, r: Tensor) -> bool:
    """Is y = s_w W u + s_b b on this example (the layout read right)?"""
    w = m.weight.detach().reshape(r.shape[-1], -1)
    pred = ad.sw * u[0] @ w.T  # (L, out)
    b = getattr(m, "bias", None)
    if isinstance(b, Tensor):
        pred = pred + ad.sb * b.detach().reshape(1, -1)
    return _close(pred, r[0, 0])


def _close(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape:
        return False
    tol = 1e-4 if a.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-9
    scale = max(float(b.abs().max()), 1.0)
    return bool((a - b).abs().max() <= tol * scale)


def find_layers(model: nn.Module, params: dict, frozen: dict, batch: Batch) -> list[LayerSpec]:
    """Supported layers holding selected parameters, called exactly once, checked."""
    cands = {}
    for mname, m in model.named_modules():
        ad = adapter(m)
        if ad is None:
            continue
        pre = f"{mname}." if mname else ""
        wname = pre + "weight" if pre + "weight" in params else None
        bias = getattr(m, "bias", None)
        bname = pre + "bias" if isinstance(bias, Tensor) and pre + "bias" in params else None
        if wname or bname:
            cands[mname] = (m, wname, bname, ad)
    if not cands:
        return []
    seen: dict[str, list] = {k: [] for k in cands}
    handles = []
    for key, (m, *_rest) in cands.items():

        def hook(mod, args, out, key=key):
            h = args[0] if args else None
            version = h._version if isinstance(h, Tensor) else None
            y = out.clone() if isinstance(out, Tensor) else out  # later in-place ops
            seen[key].append((h, version, y))

        handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            call(model, {**frozen, **params}, batch.slice(0, 1).tree(), 1)
    except Exception as e:  # noqa: BLE001 - say that it is the single example
        raise ValueError(
            "`model` fails on a single example (the empirical NTK is computed example by "
            f"example): {type(e).__name__}: {e}"
        ) from None
    finally:
        for h in handles:
            h.remove()
    specs = []
    for key, (m, wname, bname, ad) in cands.items():
        calls = seen[key]
        if len(calls) != 1 or not isinstance(calls[0][0], Tensor):
            continue
        h, version, y = calls[0]
        if not isinstance(y, Tensor):
            continue
        if h._version != version:  # the input is modified in place after the layer
            continue
        if isinstance(ad, NormAdapter):
            spec = _norm_spec(key, m, wname, bname, ad, h, y)
            if spec is not None:
                specs.append(spec)
            continue
        try:
            u = ad.patches(h)
            r = ad.rows(y.unsqueeze(1))
        except (RuntimeError, ValueError):
            continue
        w = m.weight
        if u.shape[-1] * r.shape[-1] != w.numel() or u.shape[1] != r.shape[2]:
            continue  # layout not understood: leave to the Jacobian fallback
        if not _check_affine(m, ad, h, y, u, r):
            continue
        specs.append(
            LayerSpec(
                key, m, wname, bname, ad, tuple(y.shape[1:]), u.shape[1], u.shape[2], r.shape[3]
            )
        )
    return specs


def _norm_spec(key, m, wname, bname, ad: NormAdapter, h, y) -> LayerSpec | None:
    try:
        xhat = ad.normalise(m, h)
    except (RuntimeError, ValueError):
        return None
    y_shape = tuple(y.shape[1:])
    if tuple(xhat.shape) != tuple(y.shape):
        return None
    keep = [
        i for i in range(len(y_shape)) if i not in _norm_reduce_axes(ad.param_axes, len(y_shape))
    ]
    pshape = tuple(y_shape[i] for i in keep)
    view = [1] * (len(y_shape) + 1)
    for i in keep:
        view[i + 1] = y_shape[i]
    wt = m.weight.detach()
    b = getattr(m, "bias", None)
    if math.prod(pshape) != wt.numel():
        return None
    pred = xhat * wt.reshape(view)
    if isinstance(b, Tensor):
        pred = pred + b.detach().reshape(view)
    if not _close(pred, y):
        return None
    per = math.prod(y_shape) // max(1, wt.numel())
    return LayerSpec(key, m, wname, bname, ad, y_shape, 1, per, wt.numel())


#: tests set this to "materialised" or "pairwise" to force the mode of multi-position layers
FORCE_MODE: str | None = None
#: tests set this to one of VARIANTS to force how the g's are computed and contracted
FORCE_VARIANT: str | None = None


@dataclass
class LayerCost:
    """One layer's share of the structured method: FLOPs per example whose features are
    formed and per pair of examples contracted, scalars held per example of a block and
    per pair of a tile."""

    mode: str
    per_example: float
    per_pair: float
    held_example: float
    held_pair: float = 0.0


def layer_cost(
    spec: LayerSpec,
    n: int,
    n_out: int,
    trace: bool,
    one_output: bool = False,
    grams_per_output: bool = False,
) -> LayerCost:
    """The cheaper way to contract one layer in (n x n) tiles (see the module docstring).

    ``one_output``: one output at a time (batched traced kernels), so only the features
    of one output are held; ``grams_per_output``: the Gram matrices of the patches are
    formed again for every output."""
    k = 1 if trace else n_out  # output pairs per output
    held_out = 1 if one_output else n_out
    uu = n_out if grams_per_output else 1
    if spec.norm:
        p = spec.out * ((spec.weight is not None) + (spec.bias is not None))
        return LayerCost(
            "norm", 4 * n_out * math.prod(spec.y_shape), 2 * k * n_out * p, held_out * p
        )
    if spec.L == 1:
        return LayerCost(
            "factored",
            0.0,
            2 * (uu * spec.fan_in + k * n_out * spec.out),
            held_out * spec.out + spec.fan_in,
        )
    p = spec.out * spec.fan_in
    mat = LayerCost("materialised", 2 * n_out * spec.L * p, 2 * k * n_out * p, held_out * p)
    pair = LayerCost(
        "pairwise",
        0.0,
        2 * spec.L**2 * (uu * spec.fan_in + k * n_out * spec.out),
        held_out * spec.L * spec.out + spec.L * spec.fan_in,
        spec.L**2 * (1 + (1 if trace else n_out**2)),
    )
    if 2 * n * mat.per_example + n * n * mat.per_pair <= n * n * pair.per_pair:
        return mat
    return pair


def cat_batches(parts: list[Batch]) -> Batch:
    if len(parts) == 1:
        return parts[0]
    trees = [p.tree() for p in parts]
    return Batch(*tree_map(lambda *ts: torch.cat(ts), *trees))


#: how the g's are computed and contracted (see the module docstring and cost.py)
VARIANTS = ("per_example", "batched", "streamed", "per_output")


@dataclass
class _Feats:
    """One layer's features for one output and a block of examples."""

    flat: Tensor | None = None  # (n, d): contracted as flat1 @ flat2.T
    r: Tensor | None = None  # s_w times the weight rows: (n, out) factored, (n, L, out) pairwise
    u: Tensor | None = None  # the matching patches (n, fan_in) or (n, L, fan_in), if kept

    def split(self, na: int):
        def part(t, sl):
            return None if t is None else t[sl]

        first, second = slice(0, na), slice(na, None)
        return (
            _Feats(part(self.flat, first), part(self.r, first), part(self.u, first)),
            _Feats(part(self.flat, second), part(self.r, second), part(self.u, second)),
        )


#: most outputs whose reverse passes run as one batched pass (``_batched_reverse``), and
#: most scalars of layer g's such a pass returns
REVERSE_BATCH = 64
REVERSE_SCALARS = 1 << 22


class StructuredMethod:
    """Structured derivatives for supported layers, Jacobians for the rest.

    ``variant`` (see :data:`VARIANTS`): ``"per_example"`` (vmap(jacrev) probes, any model,
    Jacobians for unsupported parameters); the others need every parameter in a supported
    layer and a model that treats examples independently. ``"batched"``: g's of all
    outputs from batched passes, held per block (the untraced kernel). Traced:
    ``"streamed"`` runs one forward pass per tile and one reverse pass per output,
    contracting each layer's g into the tile as soon as it is computed;
    ``"per_output"`` forms one output's features of each block (in chunks of ``chunk``
    examples, a forward and a reverse pass each) and contracts them, holding features
    instead of activations.
    """

    name = "structured"
    symmetric_right = True

    def __init__(
        self, model, params, frozen, n_out, trace, specs, block, variant="per_example", chunk=None
    ):
        self.model, self.params, self.frozen = model, params, frozen
        self.n_out, self.trace, self.specs = n_out, trace, specs
        covered = {s.weight for s in specs} | {s.bias for s in specs}
        self.rest = {k: v for k, v in params.items() if k not in covered}
        self.fixed = {**frozen, **{k: v for k, v in params.items() if k in covered}}
        if variant not in VARIANTS:
            raise ValueError(f"`variant` must be one of {VARIANTS}, got {variant!r}.")
        if self.rest or (not trace and variant in ("streamed", "per_output")):
            variant = "per_example" if self.rest else "batched"
        self.variant, self.chunk = variant, chunk
        one = variant in ("streamed", "per_output")
        self.modes = {s.key: layer_cost(s, block, n_out, trace, one).mode for s in specs}
        if FORCE_MODE is not None:
            self.modes = {s.key: self.modes[s.key] if s.L == 1 else FORCE_MODE for s in specs}

    # ------------------------------------------------------------ g's, per example
    def _grads(self, batch: Batch):
        """Per-example g = df/dy (n, O, *y_shape), layer inputs, and fallback Jacobians."""
        specs, model, fixed = self.specs, self.model, self.fixed

        def f(probes, rest, tree):
            tree = tree_map(lambda t: t.unsqueeze(0), tree)
            inputs, handles = {}, []
            for s in specs:

                def hook(mod, args, out, key=s.key):
                    inputs[key] = args[0]
                    return out + probes[key]

                handles.append(s.module.register_forward_hook(hook))
            try:
                out = call(model, {**fixed, **rest}, tree, 1)[0]
            finally:
                for h in handles:
                    h.remove()
            return out, inputs

        dtype = next(iter(self.params.values())).dtype
        device = next(iter(self.params.values())).device
        probes = {s.key: torch.zeros((1, *s.y_shape), dtype=dtype, device=device) for s in specs}
        (g, jrest), h = vmap(jacrev(f, argnums=(0, 1), has_aux=True), in_dims=(None, None, 0))(
            probes, self.rest, batch.tree()
        )
        n = batch.n
        g = {k: v.reshape(n, v.shape[1], *v.shape[3:]) for k, v in g.items()}
        h = {k: v.reshape(n, *v.shape[2:]) for k, v in h.items()}
        jrest = {k: v.reshape(n, v.shape[1], -1) for k, v in jrest.items()}
        return g, h, jrest

    # ------------------------------------------------------------ g's, batched
    def _forward(self, batch: Batch):
        """A batched forward pass with a zero probe on every layer's output:
        (outputs (n, O), probes {key: (n, *y_shape)}, layer inputs {key: tensor})."""
        n = batch.n
        ref = next(iter(self.params.values()))
        probes, inputs, handles = {}, {}, []
        for s in self.specs:
            p = ref.new_zeros(()).expand(n, *s.y_shape).requires_grad_()
            probes[s.key] = p

            def hook(mod, args, out, key=s.key):
                inputs[key] = args[0].detach()
                return out + probes[key]

            handles.append(s.module.register_forward_hook(hook))
        try:
            out = call(self.model, self.fixed, batch.tree(), n)
        finally:
            for h in handles:
                h.remove()
        return out, probes, inputs

    def _reverse(self, out: Tensor, probes: dict, outputs, on_grad) -> None:
        """One reverse pass per output a in ``outputs``; ``on_grad(spec, g, a)`` receives
        each layer's g = d f_a / d y (n, *y_shape) as soon as it is computed, which is
        then freed (layers that f_a does not depend on are skipped). Where the g's of
        several outputs are small, their passes run batched (``_batched_reverse``)."""
        if not out.requires_grad:
            return
        outputs = list(outputs)
        if len(outputs) > 1 and self._batched_reverse(out, probes, outputs, on_grad):
            return
        handles, current = [], [None]
        for s in self.specs:

            def hook(p, s=s):
                g, p.grad = p.grad, None
                on_grad(s, g, current[0])

            handles.append(probes[s.key].register_post_accumulate_grad_hook(hook))
        outputs = list(outputs)
        try:
            for i, a in enumerate(outputs):
                current[0] = a
                torch.autograd.backward(
                    out[:, a].sum(),
                    inputs=list(probes.values()),
                    retain_graph=i < len(outputs) - 1,
                )
        finally:
            for hd in handles:
                hd.remove()

    def _batched_reverse(self, out: Tensor, probes: dict, outputs: list, on_grad) -> bool:
        """The reverse passes of up to REVERSE_BATCH outputs at once, as one pass over a
        batch of one-hot cotangents (autograd's ``is_grads_batched``, a vmap), while their
        g's stay within REVERSE_SCALARS: with a wide readout (Monte-Carlo kernels of
        widenets' own networks) the per-output passes were mostly call overhead. False,
        having delivered nothing, when that is not worth it or autograd cannot batch."""
        per_output = out.shape[0] * sum(math.prod(s.y_shape) for s in self.specs)
        c = min(REVERSE_BATCH, len(outputs), REVERSE_SCALARS // max(1, per_output))
        if c < 2:
            return False
        inputs = [probes[s.key] for s in self.specs]
        for k, a0 in enumerate(range(0, len(outputs), c)):
            chunk = outputs[a0 : a0 + c]
            basis = out.new_zeros((len(chunk), *out.shape))
            for m, a in enumerate(chunk):
                basis[m, :, a] = 1.0
            try:
                gs = torch.autograd.grad(
                    out,
                    inputs,
                    grad_outputs=basis,
                    retain_graph=True,
                    allow_unused=True,
                    is_grads_batched=True,
                )
            except RuntimeError:
                if k == 0:  # nothing delivered yet: the caller loops over outputs
                    return False
                raise
            for m, a in enumerate(chunk):
                for s, g in zip(self.specs, gs, strict=True):
                    if g is not None:
                        on_grad(s, g[m], a)
            del gs
        return True

    def _batched_grads(self, batch: Batch):
        """The same as :meth:`_grads` (no fallback Jacobians) from batched passes."""
        n = batch.n
        g = {
            s.key: self.params[s.weight or s.bias].new_zeros((n, self.n_out, *s.y_shape))
            for s in self.specs
        }

        def keep(s, gs, a):
            g[s.key][:, a] = gs

        with torch.enable_grad():
            out, probes, h = self._forward(batch)
            self._reverse(out, probes, range(self.n_out), keep)
        return g, h, {}

    def _features(self, s: LayerSpec, g: Tensor, h: Tensor, keep_u: bool) -> _Feats:
        """One layer's features of one output from its g (n, *y_shape) and input h."""
        if s.norm:
            xhat = s.adapter.normalise(s.module, h)
            parts = list(norm_jacobians(s, g, xhat, 1).values())
            return _Feats(flat=torch.cat(parts, 1) if len(parts) > 1 else parts[0])
        ad, mode = s.adapter, self.modes[s.key]
        flat, r, u = [], None, None
        rows = ad.rows(g.unsqueeze(1))[:, 0]  # (n, L, out)
        if s.bias is not None:
            flat.append(ad.sb * rows.sum(1))
        if s.weight is not None:
            if mode == "factored":
                r = ad.sw * rows[:, 0]
                u = ad.patches(h)[:, 0] if keep_u else None
            elif mode == "pairwise":
                r = ad.sw * rows
                u = ad.patches(h) if keep_u else None
            else:
                flat.append(ad.sw * _weight_grads(s, h, g))
        flat = None if not flat else (torch.cat(flat, 1) if len(flat) > 1 else flat[0])
        return _Feats(flat, r, u)

    def _contract(self, s: LayerSpec, f1: _Feats, f2: _Feats, uu=None) -> Tensor:
        """One layer's (n1, n2) traced term of one output."""
        term = None if f1.flat is None else f1.flat @ f2.flat.T
        if f1.r is not None:
            if f1.r.ndim == 2:  # factored: (u1 . u2) (r1 . r2)
                uu = f1.u @ f2.u.T if uu is None else uu
                w = uu * (f1.r @ f2.r.T)
            else:  # pairwise: sum over position pairs
                uu = torch.einsum("ilf,jmf->ijlm", f1.u, f2.u) if uu is None else uu
                w = (uu * torch.einsum("ilo,jmo->ijlm", f1.r, f2.r)).sum((2, 3))
            term = w if term is None else term + w
        return term

    # ------------------------------------------------------------ features and tiles
    def left(self, batch: Batch):
        if self.variant in ("streamed", "per_output"):
            return batch  # everything happens tile by tile, in pair
        if self.variant == "batched":
            g, h, jac = self._batched_grads(batch)
        else:
            g, h, jac = self._grads(batch)
        factors = []
        for s in self.specs:
            if s.norm:
                xhat = s.adapter.normalise(s.module, h[s.key])
                jac.update(norm_jacobians(s, g[s.key], xhat, 2))
                continue
            r = s.adapter.rows(g[s.key])  # (n, O, L, out)
            if s.bias is not None:
                jac[s.bias] = s.adapter.sb * r.sum(2)
            if s.weight is None:
                continue
            mode = self.modes[s.key]
            if mode == "materialised":
                jac[s.weight] = s.adapter.sw * torch.stack(
                    [_weight_grads(s, h[s.key], g[s.key][:, a]) for a in range(r.shape[1])], 1
                )
            else:
                factors.append((mode, s.adapter.sw, s.adapter.patches(h[s.key]), r))
        return factors, jac

    def right(self, batch: Batch):
        return self.left(batch)

    def pair(self, left, right) -> Tensor:
        if self.variant == "streamed":
            return self._streamed_pair(left, right)
        if self.variant == "per_output":
            return self._per_output_pair(left, right)
        (fac1, jac1), (fac2, jac2) = left, right
        out = contract(jac1, jac2, self.trace) if jac1 else None
        for (mode, sw, u1, r1), (_, _, u2, r2) in zip(fac1, fac2, strict=True):
            term = _factored_term(mode, u1, r1, u2, r2, self.trace) * sw**2
            out = term if out is None else out + term
        return out

    def _streamed_pair(self, a_batch: Batch, b_batch: Batch) -> Tensor:
        """Traced tile from one forward pass over both blocks and one reverse pass per
        output; each layer's g is contracted into the tile when the pass reaches it."""
        same = a_batch is b_batch
        both = a_batch if same else cat_batches([a_batch, b_batch])
        na = a_batch.n

        def split(t):
            return (t, t) if same else (t[:na], t[na:])

        with torch.enable_grad():
            out, probes, h = self._forward(both)
            static = {}  # output-independent Gram matrices of the patches
            for s in self.specs:
                mode = "norm" if s.norm else self.modes[s.key]
                if s.weight is None or mode not in ("factored", "pairwise"):
                    continue
                u = s.adapter.patches(h[s.key])
                u1, u2 = split(u[:, 0] if mode == "factored" else u)
                static[s.key] = (
                    u1 @ u2.T if mode == "factored" else torch.einsum("ilf,jmf->ijlm", u1, u2)
                )
            tile = out.new_zeros((na, na if same else both.n - na))

            def on_grad(s, g, a):
                f = self._features(s, g, h[s.key], keep_u=False)
                f1, f2 = (f, f) if same else f.split(na)
                tile.add_(self._contract(s, f1, f2, static.get(s.key)))

            self._reverse(out, probes, range(self.n_out), on_grad)
        return tile / self.n_out

    def _output_features(self, batch: Batch, a: int) -> dict:
        """{key: _Feats} of output a for every layer, in chunks of ``self.chunk`` examples
        (written into buffers for the whole block, so no chunk outlives its pass)."""
        chunk = self.chunk or batch.n
        whole: dict = {}
        ref = next(iter(self.params.values()))
        for i in range(0, batch.n, chunk):
            i1 = min(i + chunk, batch.n)
            part = batch.slice(i, i1)
            got: dict = {}
            with torch.enable_grad():
                out, probes, h = self._forward(part)

                def on_grad(s, g, a, got=got, h=h):
                    got[s.key] = self._features(s, g, h[s.key], keep_u=True)

                self._reverse(out, probes, [a], on_grad)
            for s in self.specs:
                f = got.pop(s.key, None)
                if f is None:  # f_a does not depend on this layer
                    zero = ref.new_zeros((part.n, *s.y_shape))
                    f = self._features(s, zero, h[s.key], keep_u=True)
                if s.key not in whole:
                    whole[s.key] = _Feats(
                        *(
                            None if t is None else t.new_empty((batch.n, *t.shape[1:]))
                            for t in (f.flat, f.r, f.u)
                        )
                    )
                w = whole[s.key]
                for dst, src in ((w.flat, f.flat), (w.r, f.r), (w.u, f.u)):
                    if dst is not None:
                        dst[i:i1] = src
            del out, probes, h
        return whole

    def _per_output_pair(self, a_batch: Batch, b_batch: Batch) -> Tensor:
        """Traced tile, one output at a time: that output's features of both blocks."""
        same = a_batch is b_batch
        tile = None
        for a in range(self.n_out):
            f1 = self._output_features(a_batch, a)
            f2 = f1 if same else self._output_features(b_batch, a)
            for s in self.specs:
                term = self._contract(s, f1[s.key], f2[s.key])
                tile = term if tile is None else tile + term
            del f1, f2  # before the next output's features are formed
        return tile / self.n_out


def _weight_grads(s: LayerSpec, h: Tensor, g: Tensor) -> Tensor:
    """Per-example weight gradient (before s_w) of one output, (n, out * fan_in)."""
    if s.adapter.weight_grads is not None:
        return s.adapter.weight_grads(h, g)
    u = s.adapter.patches(h)  # (n, L, fan_in)
    r = s.adapter.rows(g.unsqueeze(1))[:, 0]  # (n, L, out)
    return torch.bmm(r.transpose(1, 2), u).reshape(g.shape[0], -1)


def _factored_term(mode, u1, r1, u2, r2, trace) -> Tensor:
    o = r1.shape[1]
    if mode == "factored":  # one position: (u1 . u2) (g1 . g2)
        uu = u1[:, 0] @ u2[:, 0].T
        if trace:
            gg = r1[:, :, 0].reshape(r1.shape[0], -1) @ r2[:, :, 0].reshape(r2.shape[0], -1).T / o
            return uu * gg
        return uu[:, :, None, None] * torch.einsum("iao,jbo->ijab", r1[:, :, 0], r2[:, :, 0])
    uu = torch.einsum("ilf,jmf->ijlm", u1, u2)
    if trace:
        gg = torch.einsum("ialo,jamo->ijlm", r1, r2) / o
        return (uu * gg).sum((2, 3))
    return torch.einsum("ijlm,ialo,jbmo->ijab", uu, r1, r2)
