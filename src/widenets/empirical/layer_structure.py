"""Which modules are affine in their parameters, and how to read them (layer recognition
for the structured NTK, :mod:`widenets.empirical.structured`).

An affine layer maps its input patches u_l (positions l = 1..L, fan_in values each) to

    y_l = s_w W u_l + s_b b                   (out values each),

and an :class:`Adapter` says how to read a module that way: its scales s_w, s_b, the
patches u (n, L, fan_in) of an input, the rows (n, O, L, out) of an output-shaped tensor,
and, for a convolution, its per-example weight gradient sum_l g_l u_l^T by one grouped
convolution backward (groups = examples) instead of unfolding the input into patches.

A normalisation layer in eval mode is y = gamma * xhat + beta with xhat the normalised
input (:class:`NormAdapter`: how to form xhat, and which axes the parameters index).

Supported: ``nn.Linear`` (over the last axis), ``nn.Conv1d`` / ``nn.Conv2d`` (groups 1,
any padding mode, stride, dilation), eval-mode ``nn.BatchNorm1d/2d/3d`` (with running
statistics), ``nn.LayerNorm``, ``nn.GroupNorm`` (affine), and modules following the
widenets protocol: float attributes ``weight_scale`` and ``bias_scale``
(y = s_w W * x + s_b b), a channels-first output (N, out, *spatial), and either a method
``ntk_patches(x)`` returning (N, L, fan_in) patches of the input ``x`` in
``weight.reshape(out, -1)`` order, or the layout of widenets' ``DenseModule`` (channel
axis 1) or ``ConvModule`` (attributes ``kernel_size``, ``stride``, ``pads``,
``circular``).

:func:`find_layers` checks every candidate on one example (its output recomputed from the
formula above); a layer that fails the check, is called more than once per forward pass
(weight sharing), or whose input is modified in place afterwards is left out (its
parameters are then differentiated by Jacobians).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from widenets.empirical._common import Batch, call


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
    """How to read a module as y_l = s_w W u_l + s_b b over positions l."""

    sw: float
    sb: float
    patches: object  # (layer input) -> (n, L, fan_in)
    rows: object  # (n, O, *y_shape) -> (n, O, L, out)
    # (layer input, g of one output (n, *y_shape)) -> (n, out * fan_in), before s_w;
    # None: from patches and rows
    weight_grads: object = None


@dataclass
class NormAdapter:
    """How to read a normalisation layer as y = gamma * xhat + beta."""

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
    """A recognised layer: its module, differentiated parameters, adapter and sizes."""

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


def norm_reduce_axes(spec_or_axes, y_ndim: int) -> tuple:
    """Axes of a per-example output (without the example axis) that a normalisation
    layer's parameter is shared over (summed over in its derivative)."""
    axes = spec_or_axes
    if axes and axes[0] == "last":
        keep = set(range(y_ndim - axes[1], y_ndim))
    else:
        keep = set(axes)
    return tuple(i for i in range(y_ndim) if i not in keep)


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
        i for i in range(len(y_shape)) if i not in norm_reduce_axes(ad.param_axes, len(y_shape))
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
