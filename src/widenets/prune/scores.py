"""Saliency scores of prunable weights (higher: more important, kept first).

- ``"random"``: IID uniform on [0, 1).
- ``"magnitude"``: |w|.
- ``"snip"`` (Lee et al. 2019): |g * w|, g = dL/dw on the data.
- ``"grasp"`` (Wang et al. 2020): the paper's score is S = -w * (H g) and the weights with
  the largest S are removed; here the importance w * (H g) = -S is returned, H the Hessian
  of the loss in the prunable weights and g the gradient, both of loss(f(x) / T, y) on the
  data with the logits divided by the temperature T (200 in the authors' code and
  Tanaka et al.'s; T = 1 is the formula without it).
- ``"synflow"`` (Tanaka et al. 2020): |dR/dw * w| with R = 1^T (prod_l |W_l|) 1, the
  network's output summed on an input of ones with every parameter and buffer made
  positive, in float64, in eval mode (one pass; :func:`widenets.prune.prune` iterates it).

Scores are computed on a copy of the model, at its effective (masked) weights; already
masked weights score -inf so that they stay pruned.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from widenets.errors import check_finite_real
from widenets.prune.targets import current_mask, prunable

METHODS = ("random", "magnitude", "snip", "grasp", "synflow")
#: GraSP's temperature (Wang et al. 2020's code, github.com/alecwangcq/GraSP, ``T=200``)
GRASP_TEMPERATURE = 200.0
NEEDS_DATA = ("snip", "grasp")


def _batches(data):
    """(x, y) or an iterable of (x, y) pairs -> list of pairs."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor):
        return [tuple(data)]
    try:
        out = [tuple(b) for b in data]
    except TypeError:
        out = []
    if not out or any(len(b) != 2 for b in out):
        raise ValueError(
            "`data` must be a pair (x, y) of tensors or an iterable of such pairs, got "
            f"{type(data).__name__}."
        )
    return out


def default_loss(out: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy for integer targets, mean squared error otherwise."""
    if not y.is_floating_point():
        return F.cross_entropy(out, y)
    return F.mse_loss(out, y.reshape(out.shape).to(out.dtype))


def _plain_copy(model: nn.Module, layers, dtype=None):
    """A copy with masks folded into plain weights, its prunable modules, the masks."""
    c = copy.deepcopy(model)
    ms = {n: current_mask(m) for n, m in prunable(c, layers).items()}
    for m in c.modules():
        if parametrize.is_parametrized(m, "weight"):
            _fold(m)
    if dtype is not None:
        c = c.to(dtype)
    return c, prunable(c, list(ms)), ms


@torch.no_grad()
def _fold(m: nn.Module) -> None:
    """Replace a parametrised weight by a plain parameter of its value. Not by
    ``parametrize.remove_parametrizations``: a deep copy shares its dynamically made class
    with the original, and removing deletes the class's ``weight`` property, for both."""
    if set(m.parametrizations) != {"weight"}:
        raise ValueError(
            f"`model`: module {type(m).__name__} has parametrised tensors other than its "
            f"weight ({sorted(m.parametrizations)}); only weight parametrisations are handled."
        )
    w = m.weight.detach().clone()
    requires_grad = m.parametrizations.weight.original.requires_grad
    del m._modules["parametrizations"]
    m.__class__ = m.__class__.__bases__[0]
    m.register_parameter("weight", nn.Parameter(w, requires_grad=requires_grad))


def _loss_grad(c, mods, batches, loss, create_graph=False):
    weights = [m.weight for m in mods.values()]
    total = [torch.zeros_like(w) for w in weights]
    for x, y in batches:
        value = loss(c(x), y)
        gs = torch.autograd.grad(value, weights, create_graph=create_graph)
        total = [t + g for t, g in zip(total, gs, strict=True)]
    return total


def scores(
    model: nn.Module,
    method: str,
    *,
    data=None,
    loss=None,
    input_shape=None,
    layers=None,
    generator: torch.Generator | None = None,
    temperature: float = GRASP_TEMPERATURE,
) -> dict[str, Tensor]:
    """Scores of the prunable weights of ``model`` (module name -> tensor of the weight's
    shape, float64 for "synflow", else the weight's dtype).

    Args:
        method: one of ``METHODS``.
        data: (x, y) or an iterable of (x, y) batches; needed by "snip" and "grasp"
            (gradients summed over batches).
        loss: ``loss(model(x), y)`` -> scalar; default cross-entropy for integer y, else MSE.
        input_shape: per-example input shape for "synflow" (default: from ``data``).
        layers: restrict to these module names (see :func:`prunable`).
        generator: randomness of "random".
        temperature: "grasp" divides the model's output by it before the loss (default
            200, as the authors' implementation).
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
    mods = prunable(model, layers)
    if method in NEEDS_DATA and data is None:
        raise ValueError(f"`data`: method {method!r} needs data (x, y) to score weights.")
    loss = default_loss if loss is None else loss
    temperature = check_finite_real(temperature, "temperature")
    if temperature <= 0:
        raise ValueError(f"`temperature` must be positive, got {temperature!r}.")
    if method == "random":
        out = {
            n: torch.rand(m.weight.shape, generator=generator, dtype=torch.float64).to(
                m.weight.dtype
            )
            for n, m in mods.items()
        }
    elif method == "magnitude":
        out = {n: m.weight.detach().abs() for n, m in mods.items()}
    elif method == "snip":
        c, cm, _ = _plain_copy(model, layers)
        gs = _loss_grad(c, cm, _batches(data), loss)
        out = {n: (g * m.weight).detach().abs() for (n, m), g in zip(cm.items(), gs, strict=True)}
    elif method == "grasp":
        out = _grasp(model, layers, _batches(data), _tempered(loss, temperature))
    else:
        out = _synflow(model, layers, data, input_shape)
    for n, m in mods.items():
        _check_finite(out[n], method, n)
        out[n] = out[n].masked_fill(~current_mask(m), float("-inf"))
    return out


def _check_finite(s: Tensor, method: str, name: str) -> None:
    if not torch.isfinite(s).all():
        raise ValueError(
            f"`model`: {method} scores of layer {name!r} are not finite (NaN/inf in the "
            "loss, its gradients or the network's output)."
        )


def _tempered(loss, temperature: float):
    """loss(out / T, y) (the loss itself when T = 1)."""
    if temperature == 1.0:
        return loss
    return lambda out, y: loss(out / temperature, y)


def _grasp(model, layers, batches, loss):
    c, cm, ms = _plain_copy(model, layers)
    # g over the surviving weights only (the pruned network's gradient), then H g by a
    # second backward of g . dL/dw
    g = [gi.detach() * ms[n] for gi, n in zip(_loss_grad(c, cm, batches, loss), cm, strict=True)]
    hg = [torch.zeros_like(x) for x in g]
    weights = [m.weight for m in cm.values()]
    for x, y in batches:
        value = loss(c(x), y)
        grads = torch.autograd.grad(value, weights, create_graph=True)
        z = sum((gi * gr).sum() for gi, gr in zip(g, grads, strict=True))
        parts = torch.autograd.grad(z, weights, allow_unused=True)
        hg = [h + (torch.zeros_like(h) if p is None else p) for h, p in zip(hg, parts, strict=True)]
    return {n: (m.weight * h).detach() for (n, m), h in zip(cm.items(), hg, strict=True)}


class SynFlow:
    """SynFlow on a positive float64 copy of a model, rescored under changing masks
    without copying again: score = |dR/dw * w| at w = |w_0| * mask."""

    def __init__(self, model, layers, data, input_shape):
        if input_shape is None:
            if data is None:
                raise ValueError(
                    "`input_shape`: synflow needs the per-example input shape (or `data` to "
                    "take it from)."
                )
            input_shape = tuple(_batches(data)[0][0].shape[1:])
        c, cm, ms = _plain_copy(model, layers, torch.float64)
        c.eval()
        with torch.no_grad():
            for t in list(c.parameters()) + [b for b in c.buffers() if b.is_floating_point()]:
                t.abs_()
        for p in c.parameters():
            p.requires_grad_(False)
        self.model, self.names = c, list(cm)
        self.weights = [m.weight.requires_grad_(True) for m in cm.values()]
        self.start = [w.detach().clone() for w in self.weights]
        self.masks = ms
        dev = self.weights[0].device
        self.x = torch.ones((1, *tuple(input_shape)), dtype=torch.float64, device=dev)

    def scores(self, masks: dict | None = None) -> dict[str, Tensor]:
        """Scores with ``masks`` (name -> bool tensor; default the model's own)."""
        masks = self.masks if masks is None else masks
        with torch.no_grad():
            for n, w, w0 in zip(self.names, self.weights, self.start, strict=True):
                w.copy_(w0 * masks[n].to(w0.device))
        try:
            r = self.model(self.x).sum()
        except Exception as e:  # noqa: BLE001 - one line naming the input
            raise ValueError(
                f"`input_shape`: the model rejected an input of ones of shape "
                f"{tuple(self.x.shape)}: {type(e).__name__}: {e}"
            ) from None
        gs = torch.autograd.grad(r, self.weights, allow_unused=True)
        return {
            n: (torch.zeros_like(w) if g is None else (g * w).abs()).detach()
            for n, w, g in zip(self.names, self.weights, gs, strict=True)
        }


def _synflow(model, layers, data, input_shape):
    return SynFlow(model, layers, data, input_shape).scores()
