"""Helpers shared by the fused chains' tests (test_fc_chain.py, test_conv_chain.py,
test_gap_chain.py): the eager reference with the fused switch off, the relative difference
they are held to, the switch and run-spy fixtures' bodies, and the convolutional networks
and inputs."""

from __future__ import annotations

import torch

import widenets as wn
from widenets import _fused

#: the kernel record's fields a chain writes
FIELDS = ("nngp", "ntk", "cov1", "cov2")


def eager(net, *args, **kw):
    """``net.kernel`` with the fused switch off (the reference)."""
    before = _fused.FUSED
    _fused.FUSED = False
    try:
        return net.kernel(*args, progress=False, **kw)
    finally:
        _fused.FUSED = before


def rel(a, b) -> float:
    """Largest absolute difference relative to the largest entry of ``b``."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def fused_on():
    """The fused loops on for a test; the switch and failure state restored after it, and
    the test failed if the loops failed (a test that makes them fail clears the state).
    A generator: each chain test module makes it its ``switch`` fixture."""
    before = _fused.FUSED, _fused._failed, _fused.BACKEND
    _fused.FUSED, _fused._failed = True, None
    yield
    failed = _fused._failed
    _fused.FUSED, _fused._failed, _fused.BACKEND = before
    assert failed is None, failed


class Runs(list):
    """The lengths of the layer runs a chain evaluated, in order; ``dtypes``: the dtype of
    each record it folded; ``extra``: the further arguments of each call (the conv chain's
    ``red``, the fully-connected chain's ``owner``)."""

    dtypes: list
    extra: list

    @property
    def reduced(self) -> list:
        """The first further argument of each call, as a bool (the conv chain's ``red``)."""
        return [bool(rest[0]) if rest else False for rest in self.extra]


def spy_runs(monkeypatch, module) -> Runs:
    """The runs ``module._evaluate`` is called with from now on (monkeypatched)."""
    seen = Runs()
    seen.dtypes, seen.extra = [], []
    real = module._evaluate

    def spy(mod, run, k, *rest):
        seen.append(len(run))
        seen.dtypes.append(k.nngp.dtype)
        seen.extra.append(rest)
        return real(mod, run, k, *rest)

    monkeypatch.setattr(module, "_evaluate", spy)
    return seen


#: the ABRelu-family layers the chains fold
ACTS = {
    "relu": wn.Relu,
    "leaky": lambda: wn.LeakyRelu(0.2),
    "abs": wn.Abs,
    "abrelu": lambda: wn.ABRelu(-0.3, 1.5),
}


def conv_body(depth, act="relu", bias=True, channels=4):
    """depth x [Conv(3x3, same), activation ``act``]."""
    b = 0.1 if bias else None
    layers = []
    for _ in range(depth):
        layers += [wn.Conv(channels, (3, 3), w_std=1.4, b_std=b), ACTS[act]()]
    return layers


def conv_net(readout, depth, act="relu", bias=True):
    """:func:`conv_body`, the ``readout`` layer, Dense(1)."""
    b = 0.1 if bias else None
    return wn.serial(*conv_body(depth, act, bias), readout, wn.Dense(1, w_std=1.3, b_std=b))


def images(n, seed, dtype=torch.float64, c=1, h=6, w=5):
    """n standard normal images (c, h, w), drawn in float64 then cast to ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, h, w, generator=g, dtype=torch.float64).to(dtype)


def fails_quietly_under_auto(monkeypatch, module, attr, net, x):
    """(the kernel, the eager kernel) of ``net`` on ``x`` under "auto", in a call large enough
    for the loops, with ``module.attr`` (a chain's numba loop) raising: the failure recorded
    in ``_fused._failed`` (then cleared) and no warning under "auto"."""

    def broken(*args):
        raise RuntimeError("no LLVM today")

    monkeypatch.setattr(module, attr, broken)
    _fused.FUSED = "auto"  # no warning under auto
    _fused._large_calls += 1  # (a large call: "auto" tries the loops)
    monkeypatch.setattr(_fused, "AUTO_NUMEL", 1)
    try:
        out = net.kernel(x, progress=False)
    finally:
        _fused._large_calls -= 1
    assert _fused._failed is not None and "no LLVM today" in _fused._failed
    _fused._failed = None
    return out, eager(net, x)


def small_call_stays_eager(net, x, runs) -> None:
    """Under "auto", a kernel of ``net`` on ``x`` below the thresholds: no chain runs (``runs``
    from :func:`spy_runs` stays empty, nothing compiled) and the eager bits come back."""
    _fused.FUSED = "auto"
    out = net.kernel(x, progress=False)
    assert not runs  # a small call: nothing compiled
    assert torch.equal(out.nngp, eager(net, x).nngp)
