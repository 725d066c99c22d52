"""DotGeneral and ImageResize against computations outside their code: the finite faces
against hand-written einsums and ``torch.nn.functional.interpolate``, the kernels against
the kernel of the finite layer's outputs (a fixed linear map of the input: the kernel of L x
through the rest of the network is the kernel of x through L and the rest), masks against
the unpadded sequences. Neural Tangents' values: ``tests/test_nt_layers.py``; Monte Carlo:
``tests/test_nt_layers_mc.py``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import widenets as wn
from widenets.compute import kernel_layout

G = torch.Generator().manual_seed(3)
X = torch.randn(4, 3, 6, 5, generator=G, dtype=torch.float64)
R = torch.randn(6, 4, generator=G, dtype=torch.float64)
V5 = torch.randn(5, generator=G, dtype=torch.float64)
B52 = torch.randn(5, 2, generator=G, dtype=torch.float64)
L536 = torch.randn(5, 3, 6, generator=G, dtype=torch.float64)

#: (layer, the same map as an einsum on (N, C, H, W))
DOTS = {
    "scalar": (wn.DotGeneral(rhs=-1.5), lambda x: -1.5 * x),
    "rhs contracts H": (
        wn.DotGeneral(rhs=R, dimension_numbers=(((2,), (0,)), ((), ()))),
        lambda x: torch.einsum("nchw,hk->ncwk", x, R),
    ),
    "lhs contracts H": (
        wn.DotGeneral(lhs=R.T, dimension_numbers=(((1,), (2,)), ((), ()))),
        lambda x: torch.einsum("kh,nchw->nckw", R.T, x),
    ),
    "rhs contracts H and W": (
        wn.DotGeneral(rhs=R[:5], dimension_numbers=(((3,), (0,)), ((), ()))),
        lambda x: torch.einsum("nchw,wk->nchk", x, R[:5]),
    ),
    "rhs pairs W": (
        wn.DotGeneral(rhs=V5, dimension_numbers=(((), ()), ((-1,), (0,)))),
        lambda x: torch.einsum("nchw,w->ncwh", x, V5),
    ),
    "rhs pairs W, free axis": (
        wn.DotGeneral(rhs=B52, dimension_numbers=(((), ()), ((3,), (0,)))),
        lambda x: torch.einsum("nchw,wj->ncwhj", x, B52),
    ),
    "lhs pairs W contracts H": (
        wn.DotGeneral(lhs=L536, dimension_numbers=(((2,), (2,)), ((0,), (3,)))),
        lambda x: torch.einsum("wjh,nchw->ncwj", L536, x),
    ),
    "identity": (wn.DotGeneral(), lambda x: x),
}


@pytest.mark.parametrize("name", list(DOTS))
def test_dot_general_module_is_the_einsum(name):
    layer, ref = DOTS[name]
    m = layer.build((3, 6, 5), seed=0, dtype=torch.float64)
    y = m(X)
    torch.testing.assert_close(y, ref(X), rtol=1e-14, atol=1e-14)
    assert tuple(y.shape[1:]) == layer.out_shape((3, 6, 5))


def _readouts():
    return {
        "pooled": lambda: [wn.Conv(4, 1, w_std=1.2, b_std=0.3), wn.Relu(), wn.GlobalAvgPool()],
        "flat": lambda: [wn.Conv(4, 1, w_std=1.2, b_std=0.3), wn.Erf(), wn.Flatten()],
    }


def _after(layer, x, readout, **kw):
    """(kernel of layer + readout at x, kernel of readout at the finite layer's outputs)."""
    net = wn.serial(layer, *readout(), wn.Dense(1, w_std=1.1, b_std=0.2))
    rest = wn.serial(*readout(), wn.Dense(1, w_std=1.1, b_std=0.2))
    y = layer.build(tuple(x.shape[1:]), seed=0, dtype=torch.float64)(x)
    return net.kernel(x, **kw), rest.kernel(y, **kw)


@pytest.mark.parametrize("readout", list(_readouts()))
@pytest.mark.parametrize("name", [n for n in DOTS if n not in ("scalar", "identity")])
def test_dot_general_kernel_is_the_kernel_of_its_outputs(name, readout):
    """Diagonal, packed and full layouts: the layer's kernel map gives the kernel of L x."""
    layer, _ = DOTS[name]
    for kw in ({}, {"batch_size": 3}):
        got, ref = _after(layer, X, _readouts()[readout], **kw)
        for f in ("nngp", "ntk"):
            torch.testing.assert_close(getattr(got, f), getattr(ref, f), rtol=1e-12, atol=0)


def test_dot_general_layouts():
    """Without contraction the diagonal (and packed) layout suffices; with it, the full one."""
    flat = [wn.Conv(4, 1), wn.Relu(), wn.Flatten()]
    no_sum = wn.serial(DOTS["rhs pairs W, free axis"][0], *flat)
    summed = wn.serial(DOTS["rhs contracts H"][0], *flat)
    assert kernel_layout(no_sum, (3, 6, 5), True, None) == "packed"
    assert kernel_layout(summed, (3, 6, 5), True, None) == "full"
    # a scalar on fully connected features
    fc = wn.serial(wn.Dense(3), wn.DotGeneral(rhs=2.0), wn.Relu(), wn.Dense(1))
    x = X.flatten(1)
    k = fc.kernel(x)
    ref = wn.serial(wn.Dense(3, w_std=2.0, b_std=0.0), wn.Relu(), wn.Dense(1)).kernel(x)
    torch.testing.assert_close(k.nngp, ref.nngp, rtol=1e-14, atol=0)


# ----- ImageResize -------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(9, 8), (12, 10), (6, 13)])
def test_linear_upsampling_is_torch_bilinear(size):
    """Upsampling (antialias has no effect): half-pixel centres, edges clamped, as
    ``F.interpolate(mode="bilinear", align_corners=False)``."""
    for antialias in (True, False):
        m = wn.ImageResize((-1, -1, *size), "linear", antialias=antialias).build((3, 6, 5))
        ref = F.interpolate(X, size=size, mode="bilinear", align_corners=False)
        torch.testing.assert_close(m(X), ref, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("size", [(4, 3), (3, 2), (5, 4)])
def test_linear_downsampling(size):
    """With antialias: PyTorch's antialiased bilinear (the triangle filter widened by the
    scale); without: plain bilinear interpolation."""
    m = wn.ImageResize((-1, -1, *size), "linear").build((3, 6, 5), dtype=torch.float64)
    ref = F.interpolate(X, size=size, mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(m(X), ref, rtol=1e-13, atol=1e-13)
    m = wn.ImageResize((-1, -1, *size), "linear", antialias=False).build((3, 6, 5))
    ref = F.interpolate(X, size=size, mode="bilinear", align_corners=False)
    torch.testing.assert_close(m(X), ref, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("size", [(4, 8), (11, 3), (6, 2)])
def test_nearest_is_torch_nearest_exact(size):
    m = wn.ImageResize((-1, -1, *size), "nearest").build((3, 6, 5))
    torch.testing.assert_close(m(X), F.interpolate(X, size=size, mode="nearest-exact"))


RESIZES = {
    "linear up": wn.ImageResize((-1, -1, 9, 8), "linear"),
    "linear down": wn.ImageResize((-1, -1, 4, 3), "linear"),
    "linear H only": wn.ImageResize((-1, -1, 3, -1), "trilinear", antialias=False),
    "nearest": wn.ImageResize((-1, -1, 11, 3), "nearest"),
}


@pytest.mark.parametrize("readout", list(_readouts()))
@pytest.mark.parametrize("name", list(RESIZES))
def test_resize_kernel_is_the_kernel_of_its_outputs(name, readout):
    layer = RESIZES[name]
    for kw in ({}, {"batch_size": 3}):
        got, ref = _after(layer, X, _readouts()[readout], **kw)
        for f in ("nngp", "ntk"):
            torch.testing.assert_close(getattr(got, f), getattr(ref, f), rtol=1e-12, atol=0)


def test_resize_layouts():
    flat = [wn.Conv(4, 1), wn.Relu(), wn.Flatten()]
    assert kernel_layout(wn.serial(RESIZES["nearest"], *flat), (3, 6, 5), True, None) == "packed"
    assert kernel_layout(wn.serial(RESIZES["linear up"], *flat), (3, 6, 5), True, None) == "full"
    kept = wn.ImageResize((-1, -1, 6, -1), "linear")  # sizes unchanged: the identity
    x = X[:2]
    k = wn.serial(wn.Conv(4, 3), kept, wn.Relu(), wn.GlobalAvgPool()).kernel(x)
    ref = wn.serial(wn.Conv(4, 3), wn.Relu(), wn.GlobalAvgPool()).kernel(x)
    torch.testing.assert_close(k.ntk, ref.ntk, rtol=0, atol=0)


# ----- masks ---------------------------------------------------------------------------------
PAD = -7.0


def test_masked_dot_general_is_each_sequence_alone():
    """A constant per position (paired axis) on sequences padded at the end: the kernel of
    the padded batch with ``mask_constant`` is that of each sequence alone with the
    constant's first entries."""
    g = torch.Generator().manual_seed(1)
    lengths, n = (4, 7, 9), 9
    xs = [torch.randn(1, 2, m, generator=g, dtype=torch.float64) for m in lengths]
    v = torch.randn(n, 3, generator=g, dtype=torch.float64)
    x = torch.cat([F.pad(s, (0, n - s.shape[-1]), value=PAD) for s in xs])

    def net(c):
        dot = wn.DotGeneral(rhs=c, dimension_numbers=(((), ()), ((2,), (0,))))
        return wn.serial(wn.Conv(4, 3, b_std=0.3), dot, wn.Relu(), wn.Conv(4, (3, 2)),
                         wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1))  # fmt: skip

    k = net(v).kernel(x, mask_constant=PAD)
    for i, s in enumerate(xs):
        alone = net(v[: s.shape[-1]]).kernel(s)
        for f in ("nngp", "ntk"):
            torch.testing.assert_close(
                getattr(k, f)[i, i], getattr(alone, f)[0, 0], rtol=1e-13, atol=0
            )


def test_masks_follow_the_map():
    """An output is masked when it reads no unmasked input with a nonzero weight."""
    mask = torch.tensor([[False, False, True, True, True, True]])
    # a contraction whose column 1 reads only masked positions, column 0 one unmasked one
    c = torch.tensor([[1.0, 0.0], [0.0, 0.0], [2.0, 1.0], [0.0, 3.0], [0.0, 0.0], [0.0, 0.0]])
    dot = wn.DotGeneral(rhs=c, dimension_numbers=(((2,), (0,)), ((), ())))
    _, plan = dot._layout((1, 6))
    assert dot._mask(mask, plan, 1).tolist() == [[False, True]]
    near = wn.ImageResize((-1, -1, 3), "nearest")  # reads positions 1, 3, 5
    assert near._mask(mask, near._ops((1, 6))).tolist() == [[False, True, True]]
    lin = wn.ImageResize((-1, -1, 3), "linear", antialias=False)  # reads 0.5, 2.5, 4.5
    assert lin._mask(mask, lin._ops((1, 6))).tolist() == [[False, True, True]]
    up = wn.ImageResize((-1, -1, 12), "linear")  # output 4 reads inputs 1 and 2, 5 reads 2, 3
    assert up._mask(mask, up._ops((1, 6))).tolist() == [[False] * 5 + [True] * 7]


def test_masked_resize_zeroes_the_padding():
    """The padded positions carry no signal (zeros) into a linear resize: the kernel equals
    that of the batch whose padding was set to 0, read through the resize."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 2, 8, generator=g, dtype=torch.float64)
    x[0, :, 5:] = PAD
    x[2, :, 6:] = PAD
    zeroed = torch.where(x == PAD, torch.zeros(()), x)
    net = wn.serial(wn.ImageResize((-1, -1, 12), "linear"), wn.Conv(4, 3), wn.Relu(), wn.Flatten())
    k = net.kernel(x, mask_constant=PAD)
    ref = net.kernel(zeroed)
    # Flatten of masked positions: those positions are zero features, the others equal
    mask = net.layers[0]._mask((x == PAD).all(1), net.layers[0]._ops((2, 8)))
    assert bool(mask[0].any()) and not bool(mask[1].any())
    torch.testing.assert_close(k.nngp[1, 1], ref.nngp[1, 1], rtol=1e-13, atol=0)
    assert not torch.allclose(k.nngp[0, 0], ref.nngp[0, 0])  # masked outputs dropped
