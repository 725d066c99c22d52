"""Masking (``mask_constant``): Neural Tangents' values, padded batches against each
sequence alone, Monte Carlo of finite networks on the unpadded sequences, errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import widenets as wn
from _finite_mc import mc_kernels
from _nt_structures import CASES, kernel_kwargs
from widenets.compute import kernel_layout

REFS = json.loads((Path(__file__).parent / "data" / "nt_structures.json").read_text())
PAD = -7.0


def rel(a, b):
    b = np.asarray(b)
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c[2] == "masked"])
def test_matches_neural_tangents(name):
    make, _, kind = CASES[name]
    ref = REFS[name]
    a = {k: np.asarray(v) for k, v in ref["inputs"].items()}
    net = make()
    x1, x2 = torch.from_numpy(a["x1"]), torch.from_numpy(a["x2"])
    k12 = net.kernel(x1, x2, **kernel_kwargs(kind, a, False))
    k11 = net.kernel(x1, **kernel_kwargs(kind, a, True))
    got = {"nngp12": k12.nngp, "ntk12": k12.ntk, "nngp11": k11.nngp, "ntk11": k11.ntk}
    for field, value in got.items():
        assert rel(value.numpy(), ref["nt"][field]) < 1e-13, (name, field)


def conv_net(width=8):
    return wn.serial(
        wn.Conv(width, 3, w_std=1.3, b_std=0.4),
        wn.Relu(),
        wn.Conv(width, 3, w_std=1.3, b_std=0.4),
        wn.Relu(),
        wn.GlobalAvgPool(),
        wn.Dense(1, w_std=1.3, b_std=0.4),
    )


def attention_net(width=8):
    return wn.serial(
        wn.Conv(width, 1, w_std=1.3, b_std=0.4),
        wn.GlobalSelfAttention(width, width, width, 2, b_std=0.2),
        wn.Relu(),
        wn.GlobalAvgPool(),
        wn.Dense(1, w_std=1.3, b_std=0.4),
    )


LENGTHS = (3, 6, 6, 9)


def sequences(seed=0, lengths=LENGTHS):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 3, n, generator=g, dtype=torch.float64) for n in lengths]


def padded(xs, length):
    return torch.cat([F.pad(x, (0, length - x.shape[-1]), value=PAD) for x in xs])


@pytest.mark.parametrize("make", [conv_net, attention_net])
def test_padded_batch_is_each_sequence_alone(make):
    net = make()
    xs = sequences()
    k = net.kernel(padded(xs, 9), mask_constant=PAD)
    for i, x in enumerate(xs):  # each sequence with itself, computed alone, unpadded
        alone = net.kernel(x)
        for f in ("nngp", "ntk"):
            assert torch.allclose(getattr(k, f)[i, i], getattr(alone, f)[0, 0], rtol=1e-13)
    pair = net.kernel(torch.cat(xs[1:3]))  # two sequences of the same length, unpadded
    for f in ("nngp", "ntk"):
        assert torch.allclose(getattr(k, f)[1:3, 1:3], getattr(pair, f), rtol=1e-13)
    # more padding changes nothing, in a set with itself or across two sets
    longer = net.kernel(padded(xs, 13), mask_constant=PAD)
    cross = net.kernel(padded(xs[:2], 13), padded(xs[2:], 13), mask_constant=PAD)
    for f in ("nngp", "ntk"):
        assert torch.allclose(getattr(longer, f), getattr(k, f), rtol=1e-13)
        assert torch.allclose(getattr(cross, f), getattr(k, f)[:2, 2:], rtol=1e-13)
    # without the mask the padding is data, and the kernel differs
    assert not torch.allclose(net.kernel(padded(xs, 9)).nngp, k.nngp, rtol=1e-3)


@pytest.mark.parametrize("make", [conv_net, attention_net])
def test_monte_carlo_on_unpadded_sequences(make):
    """Finite networks of width 128 run on each sequence at its own length (no padding):
    the NNGP and NTK between sequences of different lengths match the masked kernel
    within 5 standard errors over 48 networks plus a 2/width allowance of its scale."""
    width, samples = 128, 48
    xs = sequences(seed=1)
    exact = make(width).kernel(padded(xs, 9), mask_constant=PAD)
    net = make(width)
    nngp, nngp_se, ntk, ntk_se = mc_kernels(
        lambda s: net.build((3, 9), seed=s, dtype=torch.float64),
        lambda m: torch.cat([m(x)[:, 0] for x in xs]),
        len(xs),
        samples,
    )
    for mc, se, ref in ((nngp, nngp_se, exact.nngp), (ntk, ntk_se, exact.ntk)):
        allowed = 5 * se + 2.0 / width * ref.abs().max()
        assert bool(((mc - ref).abs() <= allowed).all()), (mc, ref, se)


def test_packed_and_tiled_layouts_agree():
    """Conv + Flatten runs a set with itself in the packed layout; tiles give the same."""
    net = wn.serial(wn.Conv(4, 3, b_std=0.3), wn.Erf(), wn.Conv(4, 3), wn.Flatten(), wn.Dense(1))
    x = padded(sequences(seed=2), 9)
    packed = net.kernel(x, mask_constant=PAD)
    tiled = net.kernel(x, mask_constant=PAD, batch_size=2)
    cross = net.kernel(x, x.clone(), mask_constant=PAD)
    for k in (tiled, cross):
        assert torch.allclose(k.ntk, packed.ntk, rtol=1e-13)
    assert kernel_layout(net, (3, 9), True, None) == "packed"


def test_valid_convolution_masks_by_window_centre():
    """'valid' windows: an output is masked when its window's centre is (Neural Tangents'
    rule), so the kernel of a padded batch is the average over the unmasked outputs."""
    net = wn.serial(wn.Conv(4, 3, padding="valid"), wn.Relu(), wn.GlobalAvgPool())
    xs = sequences(seed=3, lengths=(5, 8))
    k = net.kernel(padded(xs, 8), mask_constant=PAD)
    # sequence 0 (length 5) padded to 8: outputs 0..5 (centres 1..6), centres 1..4 unmasked
    # = the 4 outputs whose centres lie in the sequence: the first 3 are the unpadded
    # outputs, the 4th sees one padded (zero) input
    x0 = torch.where(padded(xs, 8)[:1] == PAD, torch.zeros(()), padded(xs, 8)[:1])
    cut = wn.serial(wn.Conv(4, 3, padding="valid"), wn.Relu(), wn.GlobalAvgPool())
    ref = cut.kernel(x0[..., :6])  # windows 0..3 need inputs 0..5
    assert torch.allclose(k.nngp[0, 0], ref.nngp[0, 0], rtol=1e-13)


def test_errors():
    net = conv_net()
    x = padded(sequences(), 9)
    with pytest.raises(ValueError, match="`mask_constant` must be a number"):
        net.kernel(x, mask_constant="pad")
    with pytest.raises(ValueError, match="no spatial axis"):
        wn.Dense(1).kernel(torch.randn(3, 4), mask_constant=0.0)
    x[0] = PAD
    with pytest.raises(ValueError, match=r"every position of x1\[0\] is masked"):
        net.kernel(x, mask_constant=PAD)
    # NaN as the mask constant: NaN-padded inputs are accepted
    xs = sequences()
    nan = torch.cat([F.pad(s, (0, 9 - s.shape[-1]), value=float("nan")) for s in xs])
    k = net.kernel(nan, mask_constant=float("nan"))
    assert torch.allclose(k.nngp, net.kernel(padded(xs, 9), mask_constant=PAD).nngp)


def test_a_layer_that_drops_the_mask_is_named():
    @wn.declare
    class Crop(wn.Layer):
        def out_shape(self, in_shape):
            return (*in_shape[:-1], in_shape[-1] - 1)

        def kernel_fn(self, k):
            shape = self.out_shape(k.shape1)
            return k.map(lambda t, n: t[..., :-1], shape1=shape, shape2=shape)

    net = wn.serial(wn.Conv(4, 3), Crop(), wn.Flatten())
    with pytest.raises(ValueError, match="Crop.*does not support masked inputs"):
        net.kernel(padded(sequences(), 9), mask_constant=PAD)


def test_graphs_of_different_sizes_padded():
    """Graphs of 4 and 6 vertices padded to 7 (features PAD, arcs of padded vertices
    anywhere: they are masked) give the kernel of each graph alone."""
    g = torch.Generator().manual_seed(5)
    net = wn.serial(
        wn.Conv(6, 1, b_std=0.3), wn.Aggregate(), wn.Relu(), wn.Aggregate(), wn.GlobalAvgPool()
    )
    sizes, xs, ps = (4, 6), [], []
    for v in sizes:
        xs.append(torch.randn(1, 3, v, generator=g, dtype=torch.float64))
        ps.append(torch.rand(1, v, v, generator=g, dtype=torch.float64))
    x = padded(xs, 7)
    p = torch.rand(2, 7, 7, generator=g, dtype=torch.float64)  # padded vertices' arcs: noise
    for i, v in enumerate(sizes):
        p[i, :v, :v] = ps[i][0]
    k = net.kernel(x, pattern=p, mask_constant=PAD)
    for i in range(2):
        alone = net.kernel(xs[i], pattern=ps[i])
        assert torch.allclose(k.ntk[i, i], alone.ntk[0, 0], rtol=1e-13)


def test_global_sum_pool_of_a_padded_sequence_is_the_kernel_of_the_unpadded_one():
    """GlobalSumPool sums over unmasked position pairs only (exact, against the sequence
    computed alone at its own length)."""
    torch.manual_seed(0)
    net = wn.serial(wn.Conv(4, 3), wn.Relu(), wn.GlobalSumPool(), wn.Dense(1))
    x = torch.randn(2, 2, 7, dtype=torch.float64)
    x[1, :, 5:] = 0.0  # the second sequence padded by two positions
    k = net.kernel(x, mask_constant=0.0)
    alone = net.kernel(x[1:, :, :5])
    torch.testing.assert_close(k.ntk[1, 1], alone.ntk[0, 0], rtol=1e-13, atol=0)
    torch.testing.assert_close(k.nngp[1, 1], alone.nngp[0, 0], rtol=1e-13, atol=0)
