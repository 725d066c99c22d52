"""Conv, Flatten, GlobalAvgPool: Monte-Carlo convergence, exact cases, bad input."""

import math

import pytest
import torch
from tests._mc import assert_converges, images

import widenets as wn


def _cnn(readout, parameterization="ntk"):
    p = parameterization
    return wn.serial(
        wn.Conv(8, 3, w_std=1.5, b_std=0.2, parameterization=p),
        wn.Relu(),
        wn.Conv(8, 3, stride=2, padding="circular", w_std=1.3, b_std=0.1, parameterization=p),
        wn.Erf(),
        readout,
        wn.Dense(64, w_std=1.2, parameterization=p),
    )


@pytest.mark.parametrize("readout", [wn.Flatten(), wn.GlobalAvgPool()], ids=["vec", "gap"])
def test_conv1d_monte_carlo_nngp(readout):
    assert_converges(_cnn(readout), images(spatial=(5,)), "nngp", widths=(4, 48), n_samples=24)


@pytest.mark.parametrize("readout", [wn.Flatten(), wn.GlobalAvgPool()], ids=["vec", "gap"])
def test_conv1d_monte_carlo_ntk(readout):
    assert_converges(_cnn(readout), images(n=2, spatial=(5,)), "ntk", widths=(4, 32), n_samples=16)


def test_conv2d_valid_standard_parameterization_monte_carlo():
    net = wn.serial(
        wn.Conv(8, (2, 3), padding="valid", w_std=1.4, b_std=0.3, parameterization="standard"),
        wn.Relu(),
        wn.Flatten(),
        wn.Dense(48, w_std=1.1, parameterization="standard"),
    )
    x = images(n=2, spatial=(3, 4))
    assert_converges(net, x, "nngp", widths=(2, 32), n_samples=16)
    assert_converges(net, x, "ntk", widths=(2, 32), n_samples=16)


def test_1x1_conv_equals_dense_per_pixel():
    """A 1x1 convolution is a Dense layer applied at every position: same kernels, and the
    same finite network output for the same weights."""
    x = images(n=4, c=3, spatial=(4, 5))
    conv = wn.serial(wn.Conv(16, (1, 1), w_std=1.3, b_std=0.4), wn.Relu(), wn.Flatten())
    dense = wn.serial(wn.Dense(16, w_std=1.3, b_std=0.4), wn.Relu(), wn.Flatten())
    kc, kd = conv.kernel(x), dense.kernel(x)
    torch.testing.assert_close(kc.nngp, kd.nngp, rtol=1e-13, atol=0)
    torch.testing.assert_close(kc.ntk, kd.ntk, rtol=1e-13, atol=0)
    mc = wn.Conv(16, (1, 1), w_std=1.3, b_std=0.4).build((3, 4, 5), seed=3, dtype=torch.float64)
    md = wn.Dense(16, w_std=1.3, b_std=0.4).build((3, 4, 5), seed=3, dtype=torch.float64)
    with torch.no_grad():
        md.weight.copy_(mc.weight[:, :, 0, 0])
        md.bias.copy_(mc.bias)
    torch.testing.assert_close(mc(x), md(x), rtol=1e-12, atol=1e-12)


def test_conv_module_matches_torch_conv2d():
    """The finite face is torch's convolution with the NTK scale on the weight."""
    layer = wn.Conv(5, (3, 3), stride=2, padding="valid", w_std=1.7, b_std=0.5)
    m = layer.build((4, 7, 7), seed=1, dtype=torch.float64)
    ref = torch.nn.Conv2d(4, 5, 3, stride=2, dtype=torch.float64)
    with torch.no_grad():
        ref.weight.copy_(m.weight * 1.7 / math.sqrt(4 * 9))
        ref.bias.copy_(m.bias * 0.5)
    x = images(n=2, c=4, spatial=(7, 7))
    torch.testing.assert_close(m(x), ref(x))


def test_circular_gap_invariant_to_translation():
    """With circular padding every layer commutes with cyclic shifts, and GlobalAvgPool
    forgets position: the kernel between x and a translated x' equals that with x'."""
    x = images(n=3, c=2, spatial=(5, 6), seed=4)
    net = wn.serial(
        wn.Conv(8, (3, 3), padding="circular", w_std=1.4, b_std=0.1),
        wn.Relu(),
        wn.Conv(8, (3, 3), padding="circular", w_std=1.4),
        wn.Relu(),
        wn.GlobalAvgPool(),
        wn.Dense(1),
    )
    shifted = torch.roll(x, shifts=(2, -1), dims=(2, 3))
    k, ks = net.kernel(x), net.kernel(x, shifted)
    torch.testing.assert_close(ks.nngp, k.nngp, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ks.ntk, k.ntk, rtol=1e-12, atol=1e-14)
    # and a "same"-padded network is not invariant (the test can tell)
    same = wn.serial(wn.Conv(8, (3, 3), w_std=1.4), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1))
    assert not torch.allclose(same.kernel(x, shifted).nngp, same.kernel(x).nngp)


def test_flatten_and_full_paths_agree():
    """A Flatten network is computed in the diagonal layout; forcing the full pixel-pair
    layout (by running the same layers on a full input kernel) gives the same kernel."""
    from widenets.kernel import input_kernel

    x = images(n=4, c=3, spatial=(5, 4))
    net = wn.serial(
        wn.Conv(8, (3, 3), w_std=1.5, b_std=0.1),
        wn.Gelu(),
        wn.Conv(8, (2, 2), stride=2, padding="circular", w_std=1.2),
        wn.Relu(),
        wn.Flatten(),
        wn.Dense(1, w_std=1.1, b_std=0.2),
    )
    diag = net.kernel(x)
    assert not net.needs_pixel_pairs()
    full = net.kernel_fn(input_kernel(x, x, x1_is_x2=True, full_spatial=True))
    torch.testing.assert_close(diag.nngp, full.nngp, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(diag.ntk, full.ntk, rtol=1e-12, atol=1e-15)


def test_readout_decides_the_layout():
    vec = _cnn(wn.Flatten())
    gap = _cnn(wn.GlobalAvgPool())
    assert not vec.needs_pixel_pairs()
    assert gap.needs_pixel_pairs()
    assert wn.residual(wn.AvgPool(1, padding="same")).needs_pixel_pairs()


def test_tiling_does_not_change_full_kernels_with_spatial_output():
    """Mirroring of full-layout kernels swaps the pixel pairs too."""
    x = images(n=5, c=2, spatial=(4, 3))
    net = wn.serial(wn.Conv(4, (2, 3), w_std=1.3), wn.Relu(), wn.AvgPool((2, 1)))
    a = net.kernel(x, batch_size=2)
    b = net.kernel(x, x.clone())  # no symmetry used
    assert a.nngp.shape == (5, 5, 2, 2, 3, 3)
    torch.testing.assert_close(a.nngp, b.nngp, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(a.ntk, b.ntk, rtol=1e-13, atol=1e-15)


def test_image_without_channel_axis():
    x = torch.randn(3, 6, 6, dtype=torch.float64)
    net = wn.serial(wn.Conv(4, (3, 3)), wn.Relu(), wn.Flatten(), wn.Dense(1))
    with pytest.raises(ValueError, match=r"channels first.*x\[:, None\]"):
        net.kernel(x)
    with pytest.raises(ValueError, match="channels first"):
        net.build((6, 6))
    with pytest.raises(ValueError, match="spatial axes"):
        wn.serial(wn.Conv(4, 3), wn.Flatten()).kernel(torch.randn(3, 5))


def test_kernel_larger_than_valid_input():
    with pytest.raises(ValueError, match="does not fit an input of size 4"):
        wn.Conv(4, (5, 3), padding="valid").kernel(torch.randn(2, 1, 4, 6))


def test_bad_conv_arguments():
    with pytest.raises(ValueError, match="padding"):
        wn.Conv(4, 3, padding="full")
    with pytest.raises(ValueError, match="kernel_size"):
        wn.Conv(4, 0)
    with pytest.raises(ValueError, match="stride"):
        wn.Conv(4, (3, 3), stride=(1, 2, 1))
    with pytest.raises(ValueError, match="out_channels"):
        wn.Conv(0)


def test_conv_rejects_mean_field_parameterisation():
    """Only Dense implements the mean-field scaling: Conv must not silently mis-scale."""
    import pytest

    import widenets as wn

    for p in ("mean_field", "mup"):
        with pytest.raises(ValueError, match="`parameterization` of Conv must be 'ntk' or"):
            wn.Conv(4, (3, 3), parameterization=p)
