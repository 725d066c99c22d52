"""The tile buffers of ``widenets._workspace``: reused only when nobody holds them, dropped
when the call ends, and kernels computed with them equal those computed without, bit for
bit, in every layout (full, packed, diagonal)."""

import pytest
import torch

import widenets as wn
from widenets import _workspace


def test_a_held_buffer_is_never_handed_out_again():
    with _workspace.active():
        a = _workspace.empty((256, 256), torch.float64)
        view = a[3:]
        del a
        b = _workspace.empty((256, 256), torch.float64)  # a's storage is still held (view)
        assert b.untyped_storage().data_ptr() != view.untyped_storage().data_ptr()
        ptr = b.untyped_storage().data_ptr()
        del b
        c = _workspace.empty((256, 256), torch.float64)  # b's storage is free again
        assert c.untyped_storage().data_ptr() == ptr
        assert c.shape == (256, 256) and c.is_contiguous()


def test_buffers_only_inside_a_call_and_dropped_after_it():
    assert not _workspace.usable(torch.ones(1))
    with _workspace.active():
        _workspace.empty((512, 512), torch.float64)
        assert _workspace._held
    assert not _workspace._held and _workspace._held_bytes == 0
    # small requests and requests outside a call are plain tensors
    with _workspace.active():
        _workspace.empty((4,), torch.float64)
        assert not _workspace._held


def test_autograd_tensors_are_not_written_into_buffers():
    w = torch.ones(3, requires_grad=True)
    with _workspace.active():
        assert _workspace.usable(torch.ones(3))
        assert not _workspace.usable(w)
        with torch.no_grad():
            assert _workspace.usable(w)


def _net(readout):
    return wn.serial(
        wn.Conv(3, (3, 3), w_std=1.4, b_std=0.1),
        wn.Relu(),
        wn.Conv(3, (3, 3), w_std=1.4, b_std=0.1, parameterization="standard"),
        wn.LeakyRelu(0.2),
        wn.Conv(3, (3, 3), w_std=1.4, b_std=0.1),
        wn.Abs(),
        wn.GlobalAvgPool() if readout == "gap" else wn.Flatten(),
        wn.Dense(1, w_std=1.2, b_std=0.1),
    )


@pytest.mark.parametrize(
    "readout, cross", [("gap", False), ("gap", True), ("vec", False), ("vec", True)]
)
def test_kernels_with_and_without_buffers_are_the_same_bits(readout, cross, monkeypatch):
    """Several tiles (batch_size) reuse the same buffers; an evaluation without any buffer
    (MIN_BYTES above every tile) gives the same bits."""
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(7, 2, 8, 8, generator=g, dtype=torch.float64)
    x2 = torch.randn(5, 2, 8, 8, generator=g, dtype=torch.float64) if cross else None
    net = _net(readout)
    monkeypatch.setattr(_workspace, "MIN_BYTES", 1 << 12)
    reused = [net.kernel(x1, x2, batch_size=bs) for bs in (None, (3, 2))]
    monkeypatch.setattr(_workspace, "MIN_BYTES", 1 << 62)
    plain = net.kernel(x1, x2)
    for k in reused:
        for name in ("nngp", "ntk"):
            assert torch.equal(getattr(k, name), getattr(plain, name)), name
