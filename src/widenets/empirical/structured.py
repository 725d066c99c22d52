"""Structured derivatives for affine layers (Novak et al. 2022, "Fast Finite Width NTK").

An affine layer maps its input patches u_l (positions l = 1..L, fan_in values each) to
y_l = s_w W u_l + s_b b (out values each). Writing g_a,l = d f_a / d y_l for output a,

    d f_a / d W = s_w sum_l g_a,l u_l^T,      d f_a / d b = s_b sum_l g_a,l,

so the layer's NTK contribution never needs the (out x fan_in) Jacobian per output:

    Theta_W(x1, x2)[a, b] = s_w^2 sum_{l, m} (u_l(x1) . u_m(x2)) (g_a,l(x1) . g_b,m(x2)).

With one position (dense layers on vectors) this is a product of two Gram matrices,
O(N^2 (fan_in + out)) instead of O(N^2 fan_in out). With many positions (convolutions)
the layer is either contracted position pair by position pair ("pairwise", cost
N^2 L^2 (fan_in + O out)) or its per-example weight gradient sum_l g u^T is formed from
the factors and contracted ("materialised", N O L out fan_in + N^2 O out fan_in),
whichever is cheaper. The g's of all layers come from one reverse pass per output: a zero
"probe" is added to each layer's output and differentiated (``vmap(jacrev)``); parameters
outside supported layers get their Jacobians in the same pass.

Supported layers: ``nn.Linear`` (over the last axis), ``nn.Conv1d`` / ``nn.Conv2d``
(groups 1, any padding mode, stride, dilation), and modules following the widenets
protocol: float attributes ``weight_scale`` and ``bias_scale`` (y = s_w W * x + s_b b),
a channels-first output (N, out, *spatial), and either a method ``ntk_patches(x)``
returning (N, L, fan_in) patches of the input ``x`` in ``weight.reshape(out, -1)`` order,
or the layout of widenets' ``DenseLayer`` (channel axis 1) or ``ConvLayer`` (attributes
``kernel_size``, ``stride``, ``pads``, ``circular``). A layer called more than once per
forward pass (weight sharing) is left to the Jacobian fallback.
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


def _rows_channels_first(g: Tensor) -> Tensor:
    """(n, O, out, *spatial) -> (n, O, L, out)."""
    return g.reshape(g.shape[0], g.shape[1], g.shape[2], -1).transpose(2, 3)


@dataclass
class Adapter:
    sw: float
    sb: float
    patches: object  # (layer input) -> (n, L, fan_in)
    rows: object  # (n, O, *y_shape) -> (n, O, L, out)


def _scale(v) -> float:
    return float(v.detach()) if isinstance(v, Tensor) else float(v)


def adapter(m: nn.Module) -> Adapter | None:
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
        k, s, d = m.kernel_size, m.stride, m.dilation

        def patches(h, pad=pad, mode=mode, k=k, s=s, d=d):
            return _unfold(F.pad(h, pad, mode=mode) if any(pad) else h, k, s, d)

        return Adapter(1.0, 1.0, patches, _rows_channels_first)
    if not (hasattr(m, "weight_scale") and hasattr(m, "bias_scale")):
        return None
    sw, sb = _scale(m.weight_scale), _scale(m.bias_scale)
    if callable(getattr(m, "ntk_patches", None)):
        return Adapter(sw, sb, m.ntk_patches, _rows_channels_first)
    if w.ndim == 2:  # DenseLayer: affine map over the channel axis 1

        def dense_patches(h):
            return h.reshape(h.shape[0], h.shape[1], -1).transpose(1, 2)

        return Adapter(sw, sb, dense_patches, _rows_channels_first)
    if w.ndim in (3, 4) and all(hasattr(m, a) for a in ("kernel_size", "stride", "pads")):
        flat = [v for lohi in reversed(tuple(m.pads)) for v in lohi]
        mode = "circular" if getattr(m, "circular", False) else "constant"
        k, s = tuple(m.kernel_size), tuple(m.stride)

        def conv_patches(h, flat=flat, mode=mode, k=k, s=s):
            h = F.pad(h, flat, mode=mode) if any(flat) else h
            return _unfold(h, k, s, (1,) * len(k))

        return Adapter(sw, sb, conv_patches, _rows_channels_first)
    return None


@dataclass
class LayerSpec:
    key: str  # module name
    module: nn.Module
    weight: str | None  # full name of the weight if it is differentiated
    bias: str | None
    adapter: Adapter
    y_shape: tuple  # per-example output shape
    L: int  # positions
    fan_in: int
    out: int


def find_layers(model: nn.Module, params: dict, frozen: dict, batch: Batch) -> list[LayerSpec]:
    """Supported affine layers holding selected parameters, called exactly once."""
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
            seen[key].append((args[0] if args else None, out))

        handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            call(model, {**frozen, **params}, batch.slice(0, 1).tree(), 1)
    finally:
        for h in handles:
            h.remove()
    specs = []
    for key, (m, wname, bname, ad) in cands.items():
        calls = seen[key]
        if len(calls) != 1 or not isinstance(calls[0][0], Tensor):
            continue
        h, y = calls[0]
        if not isinstance(y, Tensor):
            continue
        try:
            u = ad.patches(h)
            r = ad.rows(y.unsqueeze(1))
        except (RuntimeError, ValueError):
            continue
        w = m.weight
        if u.shape[-1] * r.shape[-1] != w.numel() or u.shape[1] != r.shape[2]:
            continue  # layout not understood: leave to the Jacobian fallback
        specs.append(
            LayerSpec(
                key, m, wname, bname, ad, tuple(y.shape[1:]), u.shape[1], u.shape[2], r.shape[3]
            )
        )
    return specs


#: tests set this to "materialised" or "pairwise" to force the mode of multi-position layers
FORCE_MODE: str | None = None


def layer_cost(spec: LayerSpec, n: int, n_out: int, trace: bool) -> tuple[str, float, float]:
    """(mode, flops, scalars held) for one (n x n) tile of one layer's weight term."""
    k = n_out if trace else n_out**2
    if spec.L == 1:
        return (
            "factored",
            2 * n * n * (spec.fan_in + k * spec.out),
            n * n_out * (spec.out + spec.fan_in),
        )
    mat = (
        2 * (2 * n * n_out * spec.L * spec.out * spec.fan_in)
        + 2 * n * n * k * spec.out * spec.fan_in
    )
    mat_mem = 2 * n * n_out * spec.out * spec.fan_in
    pair = 2 * n * n * spec.L**2 * (spec.fan_in + k * spec.out)
    pair_mem = n * n * spec.L**2 * (1 + (1 if trace else n_out**2))
    if mat <= pair:
        return "materialised", mat, mat_mem
    return "pairwise", pair, pair_mem


class StructuredMethod:
    """Structured derivatives for supported affine layers, Jacobians for the rest."""

    name = "structured"
    symmetric_right = True

    def __init__(self, model, params, frozen, n_out, trace, specs, block):
        self.model, self.params, self.frozen = model, params, frozen
        self.n_out, self.trace, self.specs = n_out, trace, specs
        covered = {s.weight for s in specs} | {s.bias for s in specs}
        self.rest = {k: v for k, v in params.items() if k not in covered}
        self.fixed = {**frozen, **{k: v for k, v in params.items() if k in covered}}
        self.modes = {s.key: layer_cost(s, block, n_out, trace)[0] for s in specs}
        if FORCE_MODE is not None:
            self.modes = {s.key: FORCE_MODE if s.L > 1 else "factored" for s in specs}

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

    def left(self, batch: Batch):
        g, h, jac = self._grads(batch)
        factors = []
        for s in self.specs:
            u = s.adapter.patches(h[s.key])  # (n, L, fan_in)
            r = s.adapter.rows(g[s.key])  # (n, O, L, out)
            if s.bias is not None:
                jac[s.bias] = s.adapter.sb * r.sum(2)
            if s.weight is None:
                continue
            mode = self.modes[s.key]
            if mode == "materialised":
                dw = s.adapter.sw * torch.einsum("nlf,nalo->naof", u, r)
                jac[s.weight] = dw.reshape(batch.n, r.shape[1], -1)
            else:
                factors.append((mode, s.adapter.sw, u, r))
        return factors, jac

    def right(self, batch: Batch):
        return self.left(batch)

    def pair(self, left, right) -> Tensor:
        (fac1, jac1), (fac2, jac2) = left, right
        out = contract(jac1, jac2, self.trace) if jac1 else None
        for (mode, sw, u1, r1), (_, _, u2, r2) in zip(fac1, fac2, strict=True):
            term = _factored_term(mode, u1, r1, u2, r2, self.trace) * sw**2
            out = term if out is None else out + term
        return out


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


def structured_numel(specs: list[LayerSpec], n_out: int) -> int:
    """Scalars of g and patches held per example."""
    return sum(n_out * math.prod(s.y_shape) + s.L * s.fan_in for s in specs)
