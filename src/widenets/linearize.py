"""Taylor expansions of a network in its parameters around their initial values.

``linearize(model)`` is the module x -> f(x; theta0) + J(x; theta0) (theta - theta0)
(Lee et al. 2019, "Wide Neural Networks of Any Depth Evolve as Linear Models Under
Gradient Descent"); ``taylor(model, order)`` adds the higher terms
sum_{k <= order} D^k f(x; theta0)[theta - theta0]^k / k!. The directional derivatives
D^k f[delta]^k are nested forward-mode products (``torch.func.jvp``), so no Jacobian or
Hessian is formed; gradients with respect to theta flow through them by ordinary autograd,
so the expansion trains like any module.

The expanded network is a private copy of ``model`` whose parameters became fixed buffers
(theta0); the module's own parameters theta start at theta0. The copy is always evaluated
in eval mode (BatchNorm running statistics, dropout off): the expansion is of that
deterministic function. ``params`` (as in :func:`widenets.empirical.ntk`) chooses the
parameters to expand in; the others stay fixed at their values.
"""

from __future__ import annotations

import copy
import math

from torch import Tensor, nn
from torch.func import functional_call, jvp

from widenets.empirical.params import select_params
from widenets.errors import check_positive_int


def _set_buffer(root: nn.Module, name: str, value: Tensor) -> None:
    *path, leaf = name.split(".")
    m = root
    for p in path:
        m = getattr(m, p)
    del m._parameters[leaf]
    m.register_buffer(leaf, value)


class Taylor(nn.Module):
    """f(x; theta0) + sum_{k=1}^{order} D^k f(x; theta0)[theta - theta0]^k / k!."""

    def __init__(self, model: nn.Module, order: int = 1, params=None):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
        self.order = check_positive_int(order, "order")
        names = list(select_params(model, params))
        base = copy.deepcopy(model)
        for n, p in list(base.named_parameters()):  # every parameter becomes a fixed buffer
            _set_buffer(base, n, p.detach().clone())
        self.base = base.eval()
        self.names = names
        theta0 = dict(base.named_buffers())
        self.theta = nn.ParameterList([nn.Parameter(theta0[n].clone()) for n in names])

    def train(self, mode: bool = True):
        super().train(mode)
        self.base.eval()
        return self

    def theta0(self) -> dict[str, Tensor]:
        buffers = dict(self.base.named_buffers())
        return {n: buffers[n] for n in self.names}

    def forward(self, *args, **kwargs):
        base = self.base
        theta0 = self.theta0()
        delta = {n: p - theta0[n] for n, p in zip(self.names, self.theta, strict=True)}

        def f(p):
            return functional_call(base, p, args, kwargs, strict=False)

        # g_k(p) = D^k f(p)[delta]^k; terms(k) returns (g_0(p), ..., g_k(p))
        def terms(k):
            if k == 0:
                return lambda p: (f(p),)

            prev = terms(k - 1)

            def fk(p):
                primal, tangent = jvp(prev, (p,), (delta,))
                return (*primal, tangent[-1])

            return fk

        out = terms(self.order)(theta0)
        total = out[0]
        for k in range(1, self.order + 1):
            total = _add(total, _scale(out[k], 1.0 / math.factorial(k)))
        return total

    def extra_repr(self) -> str:
        return f"order={self.order}, params={len(self.names)} tensors"


def _scale(t, c):
    if isinstance(t, Tensor):
        return t * c
    if isinstance(t, dict):
        return {k: _scale(v, c) for k, v in t.items()}
    return type(t)(_scale(v, c) for v in t)


def _add(a, b):
    if isinstance(a, Tensor):
        return a + b
    if isinstance(a, dict):
        return {k: _add(a[k], b[k]) for k in a}
    return type(a)(_add(x, y) for x, y in zip(a, b, strict=True))


def linearize(model: nn.Module, *, params=None) -> Taylor:
    """First-order Taylor expansion of ``model`` in its parameters (a trainable module)."""
    return Taylor(model, 1, params)


def taylor(model: nn.Module, order: int = 2, *, params=None) -> Taylor:
    """Taylor expansion of ``model`` to ``order`` in its parameters (a trainable module)."""
    return Taylor(model, order, params)
