"""Empirical neural tangent kernel of a torch.nn.Module.

Theta(x1, x2)[a, b] = sum_p df_a(x1)/dp df_b(x2)/dp over the trainable parameters p.
``trace_outputs=True`` returns the mean over the diagonal a = b, which estimates the
per-channel NTK of the infinite-width limit (where Theta = Theta_scalar (x) I).

Methods:
- ``"jacobian"``: per-example Jacobians by ``torch.func.vmap(jacrev)`` over
  ``functional_call``, contracted parameter by parameter.
- ``"structured"``: for affine layers (``nn.Linear`` and widenets' Dense) the Jacobian is
  never materialised: with layer input h and output y = s_w W h + s_b b,
  Theta_layer(x1, x2)[a, b] = (s_w^2 h(x1).h(x2) + s_b^2) <dy f_a(x1), dy f_b(x2)>
  (Novak et al. 2022, "Fast Finite Width Neural Tangent Kernel"), with the gradients
  dy f obtained by one batched backward pass.
- ``"auto"``: "structured" when every trainable parameter sits in a supported layer with
  2-D activations, else "jacobian".
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from widenets.empirical._common import forward_flat, prepare_inputs, trainable_params
from widenets.modules import DenseLayer

METHODS = ("auto", "jacobian", "structured")


def _affine_scales(module: nn.Module) -> tuple[float, float] | None:
    """(s_w, s_b) of y = s_w W h + s_b b for supported affine modules, else None."""
    if isinstance(module, DenseLayer):
        return module.weight_scale, module.bias_scale
    if type(module) is nn.Linear:
        return 1.0, 1.0
    return None


def _structured_layers(model: nn.Module):
    """Supported affine modules covering every trainable parameter, or None."""
    params = trainable_params(model)
    covered, layers = set(), []
    for name, module in model.named_modules():
        scales = _affine_scales(module)
        if scales is None:
            continue
        own = {f"{name}.{n}" if name else n for n, p in module.named_parameters(recurse=False)}
        trainable_own = {n for n in own if n in params}
        if trainable_own:
            layers.append((module, scales))
            covered |= trainable_own
    return layers if covered == set(params) else None


def _jacobians(model, params, buffers, x):
    def f(p, xi):
        return functional_call(model, (p, buffers), (xi.unsqueeze(0),)).reshape(-1)

    return vmap(jacrev(f), in_dims=(None, 0))(params, x)


def _ntk_jacobian(model, x1, x2, trace):
    params = {n: p.detach() for n, p in trainable_params(model).items()}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    j1 = _jacobians(model, params, buffers, x1)
    j2 = j1 if x2 is None else _jacobians(model, params, buffers, x2)
    out = None
    for name in params:
        a = j1[name].flatten(2)  # (N1, O, P)
        b = j2[name].flatten(2)
        if trace:
            term = torch.einsum("iop,jop->ij", a, b) / a.shape[1]
        else:
            term = torch.einsum("iap,jbp->ijab", a, b)
        out = term if out is None else out + term
    return out


def _layer_grads(model, layers, x):
    """Inputs h and output-gradients G[o, n, :] = d f_o(x_n) / d y for each affine layer."""
    captured = []

    def hook(module, inputs, output):
        captured.append((inputs[0].detach(), output))

    handles = [m.register_forward_hook(hook) for m, _ in layers]
    try:
        with torch.enable_grad():
            out = forward_flat(model, x)
            n, o = out.shape
            cot = torch.zeros((o, n, o), dtype=out.dtype, device=out.device)
            idx = torch.arange(o)
            cot[idx, :, idx] = 1.0
            grads = torch.autograd.grad(
                out, [y for _, y in captured], grad_outputs=cot, is_grads_batched=True
            )
    finally:
        for h in handles:
            h.remove()
    return [(h, g) for (h, _), g in zip(captured, grads, strict=True)]


def _ntk_structured(model, layers, x1, x2, trace):
    g1 = _layer_grads(model, layers, x1)
    g2 = g1 if x2 is None else _layer_grads(model, layers, x2)
    if len(g1) != len(layers):
        raise ValueError("structured NTK: each affine layer must be called exactly once.")
    out = None
    for (h1, d1), (h2, d2), (_, (sw, sb)) in zip(g1, g2, layers, strict=True):
        scale = (h1 @ h2.T) * sw**2 + sb**2  # (N1, N2); bias term s_b^2 (0 when no bias)
        if trace:
            dd = torch.einsum("oik,ojk->ij", d1, d2) / d1.shape[0]
            term = scale * dd
        else:
            dd = torch.einsum("aik,bjk->ijab", d1, d2)
            term = scale[:, :, None, None] * dd
        out = term if out is None else out + term
    return out


def ntk(
    model: nn.Module,
    x1,
    x2=None,
    *,
    trace_outputs: bool = True,
    method: str = "auto",
) -> Tensor:
    """Empirical NTK of ``model`` between x1 and x2 (x2 None: x1 with itself).

    Returns (N1, N2) with ``trace_outputs`` (the mean over output channels of the diagonal
    blocks), else (N1, N2, O, O). The model's outputs are flattened per example.
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
    x1, x2 = prepare_inputs(model, x1, x2)
    layers = _structured_layers(model) if method in ("auto", "structured") else None
    if method == "structured" and layers is None:
        raise ValueError(
            "method='structured' needs every trainable parameter in an nn.Linear or widenets "
            "Dense layer; use method='jacobian'."
        )
    if layers is not None:
        # bias-free layers have s_b = 0 in _affine_scales only via bias None:
        layers = [(m, (sw, sb if m.bias is not None else 0.0)) for m, (sw, sb) in layers]
        return _ntk_structured(model, layers, x1, x2, trace_outputs)
    return _ntk_jacobian(model, x1, x2, trace_outputs)


def nngp(model: nn.Module, x1, x2=None, *, trace_outputs: bool = True) -> Tensor:
    """Empirical NNGP: f(x1) f(x2)^T, averaged over output channels when traced."""
    x1, x2 = prepare_inputs(model, x1, x2)
    with torch.no_grad():
        f1 = forward_flat(model, x1)
        f2 = f1 if x2 is None else forward_flat(model, x2)
    if trace_outputs:
        return f1 @ f2.T / f1.shape[1]
    return torch.einsum("ia,jb->ijab", f1, f2)
