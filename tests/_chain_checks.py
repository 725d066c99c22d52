"""Helpers shared by the fused chains' tests (test_fc_chain.py, test_conv_chain.py): the
eager reference with the fused switch off, and the relative difference they are held to."""

from __future__ import annotations

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
