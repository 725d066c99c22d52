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


@pytest.mark.parametrize("name", sorted(A.ACTIVATIONS))
def test_activation_names_build_the_layer_of_the_registry(name):
    x = images(n=3, c=4, spatial=())
    by_name = A.fully_connected(2, width=8, activation=name.upper())
    by_layer = A.fully_connected(2, width=8, activation=A.ACTIVATIONS[name]())
    torch.testing.assert_close(by_name.kernel(x).ntk, by_layer.kernel(x).ntk, rtol=0, atol=0)


def test_depth_zero_is_the_linear_model():
    x = images(n=3, c=4, spatial=())
    k = A.fully_connected(0, w_std=1.5, b_std=0.2).kernel(x)
    torch.testing.assert_close(k.nngp, 1.5**2 * x @ x.T / 4 + 0.2**2, rtol=1e-14, atol=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"activation": "tanh"}, "`activation` must be one of"),
        ({"activation": 3}, "`activation` must be an activation name"),
        ({"depth": -1}, "`depth` must be a non-negative integer"),
        ({"depth": 1.5}, "`depth` must be a non-negative integer"),
    ],
)
def test_fully_connected_bad_arguments(kwargs, match):
    args = {"depth": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        A.fully_connected(**args)


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
