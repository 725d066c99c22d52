"""Masks in the finite networks (``wn.apply_masked``): a padded batch through a built network
gives the outputs of each sequence alone where the kernel face says so (same convolutions,
global pooling, attention), Monte Carlo of padded batches through finite networks against
``net.kernel(x, mask_constant=...)`` (also where padding changes the kernel: Flatten,
"valid" windows, DotGeneral, ImageResize), errors."""

import math

import pytest
import torch
import torch.nn.functional as F

import widenets as wn
from _finite_mc import mc_kernels

PAD = -7.0
LENGTHS = (3, 6, 6, 9)


def sequences(seed=0, lengths=LENGTHS, c=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, c, n, generator=g, dtype=torch.float64) for n in lengths]


def padded(xs, length, value=PAD):
    return torch.cat([F.pad(x, (0, length - x.shape[-1]), value=value) for x in xs])


def conv_net(width=8):
    return wn.serial(
        wn.Conv(width, 3, w_std=1.3, b_std=0.4),
        wn.Relu(),
        wn.AvgPool(3, stride=1, padding="same"),
        wn.Conv(width, 3, w_std=1.3, b_std=0.4),
        wn.Erf(),
        wn.GlobalAvgPool(),
        wn.Dense(1, w_std=1.3, b_std=0.4),
    )


def attention_net(width=8):
    return wn.serial(
        wn.Conv(width, 1, w_std=1.3, b_std=0.4),
        wn.GlobalSelfAttention(width, width, width, 2, b_std=0.2),
        wn.LayerNorm(),
        wn.Relu(),
        wn.GlobalSumPool(),
        wn.Dense(1, w_std=1.3, b_std=0.4),
    )


def residual_net(width=8):
    branch = [wn.Relu(), wn.Conv(width, 3, w_std=1.2)]
    return wn.serial(
        wn.Conv(width, 3, w_std=1.3, b_std=0.4),
        wn.residual(*branch),
        wn.Relu(),
        wn.GlobalAvgPool(),
        wn.Dense(1, w_std=1.3, b_std=0.4),
    )


@pytest.mark.parametrize("make", [conv_net, attention_net, residual_net])
def test_padded_batch_gives_each_sequence_alone(make):
    xs = sequences()
    model = make().build((3, 9), seed=0, dtype=torch.float64)
    y = wn.apply_masked(model, padded(xs, 9), PAD)
    alone = torch.cat([model(x) for x in xs])
    torch.testing.assert_close(y, alone, rtol=1e-12, atol=1e-13)
    # NaN padding too, and longer padding changes nothing
    y_nan = wn.apply_masked(model, padded(xs, 12, value=math.nan), math.nan)
    torch.testing.assert_close(y_nan, alone, rtol=1e-12, atol=1e-13)
    # without the mask the padding is data
    assert not torch.allclose(model(padded(xs, 9)), alone, rtol=1e-3)


def test_spatial_output_and_mask():
    """A spatial output is 0 at masked positions, equal to the unpadded output elsewhere;
    the returned mask is the padding."""
    xs = sequences(seed=1)
    net = wn.serial(wn.Conv(4, 3, b_std=0.5), wn.Relu(), wn.Conv(5, 3, b_std=0.5))
    model = net.build((3, 9), seed=0, dtype=torch.float64)
    y, mask = wn.apply_masked(model, padded(xs, 9), PAD, return_mask=True)
    assert y.shape == (4, 5, 9)
    for i, x in enumerate(xs):
        n = x.shape[-1]
        torch.testing.assert_close(y[i, :, :n], model(x)[0], rtol=1e-12, atol=1e-13)
        assert bool((y[i, :, n:] == 0).all())
        assert mask[i].tolist() == [False] * n + [True] * (9 - n)


def test_unpadded_batch_is_the_plain_forward():
    x = padded(sequences(seed=2, lengths=(9, 9)), 9)
    model = conv_net().build((3, 9), seed=3, dtype=torch.float64)
    y, mask = wn.apply_masked(model, x, PAD, return_mask=True)
    torch.testing.assert_close(y, model(x), rtol=1e-13, atol=1e-14)
    assert mask is None


def flatten_net(width=8):
    """Padding is zero features after Flatten: only the kernel face says what it gives."""
    return wn.serial(
        wn.Conv(width, 3, w_std=1.3, b_std=0.4),
        wn.Relu(),
        wn.Conv(width, 3, padding="valid", w_std=1.2),
        wn.Relu(),
        wn.Flatten(),
        wn.Dense(1, w_std=1.3, b_std=0.4),
    )


def resize_net(width=8):
    """ImageResize ("linear") and a paired DotGeneral on padded sequences."""
    v = torch.linspace(-1.2, 1.5, 9, dtype=torch.float64)
    return wn.serial(
        wn.Conv(width, 3, w_std=1.3, b_std=0.4),
        wn.Relu(),
        wn.DotGeneral(rhs=v, dimension_numbers=(((), ()), ((2,), (0,)))),
        wn.ImageResize((-1, -1, 14), "linear"),
        wn.Conv(width, 3, w_std=1.2, b_std=0.2),
        wn.Relu(),
        wn.GlobalAvgPool(),
        wn.Dense(1, w_std=1.3, b_std=0.4),
    )


def transpose_net(width=8):
    """ConvTranspose (an output reading any masked input is masked), Index and ConvLocal."""
    return wn.serial(
        wn.Conv(width, 3, w_std=1.3, b_std=0.4),
        wn.Relu(),
        wn.ConvTranspose(width, 2, stride=2, w_std=1.2, b_std=0.2),
        wn.Relu(),
        wn.Index(wn.Slice[:, ::-1]),
        wn.ConvLocal(width, 3, w_std=1.2, b_std=0.3),
        wn.Relu(),
        wn.GlobalAvgPool(),
        wn.Dense(1, w_std=1.3, b_std=0.4),
    )


@pytest.mark.parametrize("make", [flatten_net, resize_net, attention_net, transpose_net])
def test_monte_carlo_of_padded_batches(make):
    """Finite networks of width 128 on the padded batch through ``apply_masked``: the NNGP
    and NTK match ``net.kernel(x, mask_constant=PAD)`` within 5 standard errors over 48
    networks plus a 2/width allowance of its scale."""
    width, samples = 128, 48
    x = padded(sequences(seed=4), 9)
    net = make(width)
    exact = net.kernel(x, mask_constant=PAD)
    nngp, nngp_se, ntk, ntk_se = mc_kernels(
        lambda s: net.build((3, 9), seed=s, dtype=torch.float64),
        lambda m: wn.apply_masked(m, x, PAD)[:, 0],
        len(x),
        samples,
    )
    for mc, se, ref in ((nngp, nngp_se, exact.nngp), (ntk, ntk_se, exact.ntk)):
        allowed = 5 * se + 2.0 / width * ref.abs().max()
        assert bool(((mc - ref).abs() <= allowed).all()), (mc, ref, se)
    # the padding matters here: the kernel of the padded batch is not the unmasked one
    assert not torch.allclose(net.kernel(x).nngp, exact.nngp, rtol=1e-2)


def test_masks_follow_dot_general_and_resize():
    """The finite face's output masks are the kernel face's (``_mask`` of each layer)."""
    xs = sequences(seed=5, lengths=(4, 9))
    x = padded(xs, 9)
    c = torch.zeros(9, 3, dtype=torch.float64)
    c[0, 0], c[5, 1], c[2, 2], c[7, 2] = 1.0, 2.0, -1.0, 0.5
    dot = wn.DotGeneral(rhs=c, dimension_numbers=(((2,), (0,)), ((), ())))
    _, mask = wn.apply_masked(dot.build((3, 9), dtype=torch.float64), x, PAD, return_mask=True)
    assert mask.tolist() == [[False, True, False], [False, False, False]]
    _, plan = dot._layout((3, 9))
    assert torch.equal(mask, dot._mask((x == PAD).all(1), plan, 1))
    up = wn.ImageResize((-1, -1, 18), "linear")
    y, mask = wn.apply_masked(up.build((3, 9), dtype=torch.float64), x, PAD, return_mask=True)
    # 4 of 9 positions unmasked, doubled: output o samples o / 2 - 1/4, so 8 reads inputs 3
    # and 4 (unmasked), 9 reads 4 and 5 (both masked)
    assert mask[0].tolist() == [False] * 9 + [True] * 9 and not bool(mask[1].any())
    assert bool((y[0, :, 9:] == 0).all()) and bool((y[0, :, :9] != 0).all())


@pytest.mark.parametrize(
    "build, x, match",
    [
        (
            lambda: torch.nn.Sequential(torch.nn.Conv1d(3, 2, 3)).double(),
            padded(sequences(lengths=(4, 9)), 9),
            "Sequential does not take masked inputs",
        ),
        (
            lambda: wn.serial(wn.Conv(2, 3), wn.GlobalAvgPool()).build((3, 9), dtype=torch.float64),
            padded(sequences(lengths=(9,)), 9).clone().fill_(PAD),
            "every position of x\\[0\\] is masked",
        ),
        (
            lambda: wn.Dense(2).build((3,)),
            torch.zeros(2, 3, dtype=torch.float64),
            "at least one spatial axis",
        ),
        (lambda: wn.Conv(2, 3).build((3, 9)), torch.zeros(1, 3, 9), "`mask_constant` must"),
    ],
)
def test_errors(build, x, match):
    c = None if "mask_constant" in match else PAD
    with pytest.raises(ValueError, match=match) as err:
        wn.apply_masked(build(), x, c)
    assert "\n" not in str(err.value)
