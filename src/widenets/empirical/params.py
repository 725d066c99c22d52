"""Which parameters an empirical NTK differentiates with respect to.

Theta_S(x1, x2) = sum_{p in S} df(x1)/dp df(x2)/dp^T for a subset S of the trainable
parameters; the others are held fixed. ``params`` may be

- ``None``: every parameter with ``requires_grad``;
- a name or list of names (as in ``model.named_parameters()``); a name that is a module
  prefix (``"fc"``) selects every parameter under it;
- a predicate ``fn(name, param) -> bool``;
- one of the shortcuts ``"readout"`` (:func:`readout`: the random-features kernel),
  ``"norm_affine"`` (:func:`norm_affine`: "Training BatchNorm and Only BatchNorm",
  Frankle et al. 2021) or ``"no_embeddings"`` (:func:`all_but_embeddings`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import Tensor, nn

NORM_TYPES = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)
SHORTCUTS = ("readout", "norm_affine", "no_embeddings")


def _direct(model: nn.Module):
    """(module name, module, [parameter names]) for modules holding parameters directly."""
    for mname, m in model.named_modules():
        own = [
            f"{mname}.{n}" if mname else n
            for n, p in m.named_parameters(recurse=False)
            if p.requires_grad
        ]
        if own:
            yield mname, m, own


def readout(model: nn.Module) -> list[str]:
    """Parameters of the last registered module that holds trainable parameters.

    For a network ending in an affine layer y = W h + b this is its readout, and the NTK
    restricted to it is the random-features kernel h(x1).h(x2) + 1 (times the scales).
    """
    mods = list(_direct(model))
    return mods[-1][2] if mods else []


def norm_affine(model: nn.Module) -> list[str]:
    """Affine parameters (weight, bias) of BatchNorm/LayerNorm/GroupNorm/InstanceNorm."""
    return [n for _, m, own in _direct(model) if isinstance(m, NORM_TYPES) for n in own]


def all_but_embeddings(model: nn.Module) -> list[str]:
    """Every trainable parameter except those of ``nn.Embedding``/``nn.EmbeddingBag``."""
    emb = (nn.Embedding, nn.EmbeddingBag)
    return [n for _, m, own in _direct(model) if not isinstance(m, emb) for n in own]


def select_params(model: nn.Module, params=None) -> dict[str, Tensor]:
    """The selected trainable parameters, by name, in registration order; clear errors."""
    allp = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not allp:
        raise ValueError(
            "`model` has no trainable parameters: its NTK is zero. Pass a model with "
            "parameters that require grad."
        )
    if params is None:
        return allp
    if isinstance(params, str) and params in SHORTCUTS:
        fn = {"readout": readout, "norm_affine": norm_affine, "no_embeddings": all_but_embeddings}
        names = set(fn[params](model))
        chosen = {n: p for n, p in allp.items() if n in names}
        what = f"the shortcut {params!r}"
    elif callable(params) and not isinstance(params, str):
        chosen = {n: p for n, p in allp.items() if _call_pred(params, n, p)}
        what = "the predicate"
    elif isinstance(params, str) or (
        isinstance(params, Iterable) and all(isinstance(s, str) for s in params)
    ):
        wanted = [params] if isinstance(params, str) else list(params)
        chosen = {}
        for w in wanted:
            hit = {n: p for n, p in allp.items() if n == w or n.startswith(w + ".")}
            if not hit:
                raise ValueError(
                    f"`params`: {w!r} names no trainable parameter (nor module prefix) of "
                    f"`model`; trainable parameters are {list(allp)}."
                )
            chosen.update(hit)
        chosen = {n: p for n, p in allp.items() if n in chosen}
        what = f"the names {wanted}"
    else:
        raise TypeError(
            "`params` must be None, a parameter name, a list of names, a predicate "
            f"fn(name, param) -> bool, or one of {SHORTCUTS}; got {type(params).__name__}."
        )
    if not chosen:
        raise ValueError(
            f"`params`: {what} selected no trainable parameter of `model` (trainable "
            f"parameters are {list(allp)}); the NTK of an empty subset is zero."
        )
    return chosen


def _call_pred(pred: Callable, name: str, p) -> bool:
    try:
        return bool(pred(name, p))
    except TypeError:
        return bool(pred(name))
