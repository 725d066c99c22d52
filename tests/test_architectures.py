"""wn.architectures: each returns a serial network whose two faces agree in shape, and
whose readout picks the kernel layout."""

import pytest
import torch
from tests._mc import assert_converges, images

import widenets as wn

A = wn.architectures


def test_fully_connected_is_the_serial_network():
    x = images(n=4, c=6, spatial=())
    net = A.fully_connected(3, width=16, out_dim=2, w_std=1.3, b_std=0.1)
    ref = wn.serial(
        *[layer for _ in range(3) for layer in (wn.Dense(16, 1.3, 0.1), wn.Relu())],
        wn.Dense(2, 1.3, 0.1),
    )
    torch.testing.assert_close(net.kernel(x).ntk, ref.kernel(x).ntk, rtol=0, atol=0)
    assert net.build((6,))(x.float()).shape == (4, 2)


@pytest.mark.parametrize(
    "make, full",
    [
        (lambda: A.cnn_vec(3, channels=8), False),
        (lambda: A.cnn_gap(3, channels=8), True),
        (lambda: A.myrtle(5, channels=8), True),
        (lambda: A.myrtle(7, channels=8), True),
        (lambda: A.myrtle(10, channels=8), True),
        (lambda: A.wide_resnet(block_size=2, k=2, base_channels=4), True),
    ],
)
def test_architectures_run_both_faces(make, full):
    net = make()
    x = images(n=3, c=3, spatial=(8, 8))
    k = net.kernel(x)
    assert net.needs_pixel_pairs() == full
    assert k.nngp.shape == (3, 3) and torch.isfinite(k.ntk).all()
    assert torch.allclose(k.nngp, k.nngp.T)
    assert net.build((3, 8, 8), seed=0)(x.float()).shape == (3, 10)


def test_myrtle_depth_checked():
    with pytest.raises(ValueError, match="depth"):
        A.myrtle(6)


def test_wide_resnet_monte_carlo_nngp():
    net = A.wide_resnet(block_size=1, k=1, base_channels=8, n_groups=2, out_dim=48, w_std=1.2)
    assert_converges(net, images(n=3, c=2, spatial=(4, 4)), "nngp", widths=(4, 32), n_samples=12)
