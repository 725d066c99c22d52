"""Bad arguments to the layers added for Neural Tangents users give one-line errors naming
the argument; declared hyperparameters compare, hash and re-width; weights redraw as built."""

from __future__ import annotations

import pytest
import torch

import widenets as wn

BAD = [
    (lambda: wn.SumPool(0), "`window` must be a positive integer, got 0"),
    (lambda: wn.SumPool(2, padding="reflect"), "`padding` must be one of"),
    (
        lambda: wn.serial(wn.Conv(2, 3), wn.SumPool(9)).kernel(torch.randn(2, 2, 5)),
        "window of size 9 does not fit an input of size 5",
    ),
    (lambda: wn.GlobalSumPool().out_shape((3,)), r"GlobalSumPool\(\) needs spatial axes"),
    (lambda: wn.fan_in_prod().out_shape((3,)), "fan_in_prod needs a list of branches"),
    (
        lambda: wn.fan_in_prod().out_shape([(3, 4), (3, 5)]),
        r"equal shape, got \(3, 4\), \(3, 5\)",
    ),
    (lambda: wn.repeat("x", 2), "`layer` of repeat must be a widenets layer, got str"),
    (lambda: wn.repeat(wn.Dense(3), 0), "`n` must be a positive integer, got 0"),
    (
        lambda: wn.repeat(wn.Conv(4, 3, padding="valid"), 2).out_shape((4, 8)),
        r"keeps its input shape: .* maps \(4, 8\) to \(4, 6\)",
    ),
    (lambda: wn.Index(wn.Slice[1:, :]).out_shape((4, 8)), "indexes the channel axis"),
    (lambda: wn.Index(wn.Slice[:, 9]).out_shape((4, 8)), "index 9 is out of range"),
    (lambda: wn.Index(wn.Slice[:, 5:2]).out_shape((4, 8)), "selects nothing"),
    (lambda: wn.Index(wn.Slice[:, ::0]), "slice step must not be zero"),
    (lambda: wn.Index(wn.Slice[:, 1.5]), "entries must be ints, slices or ..., got float"),
    (lambda: wn.Index(wn.Slice[..., ...]), "at most one \\.\\.\\."),
    (lambda: wn.Index(wn.Slice[:, 1, 2, 3]).out_shape((4, 8)), "4 indices for an input of 2"),
    (lambda: wn.ConvTranspose(4, 3, padding="circular"), "`padding` of ConvTranspose"),
    (lambda: wn.ConvTranspose(4, 3, parameterization="mup"), "'ntk' or 'standard'"),
    (lambda: wn.ConvTranspose(0, 3), "`out_channels` must be a positive integer"),
    (lambda: wn.ConvTranspose(4, (3, 3)).out_shape((4, 8)), "has a 2-D window"),
    (lambda: wn.ConvLocal(4, 3, padding="x"), "`padding` must be one of"),
    (
        lambda: wn.ConvLocal(4, 9, padding="valid").out_shape((4, 8)),
        "kernel of size 9 does not fit",
    ),
    (lambda: wn.DotGeneral(lhs=1.0, rhs=2.0), "at most one of `lhs` and `rhs`"),
    (lambda: wn.DotGeneral(rhs=[1.0, float("nan")]), "`rhs` must be finite"),
    (lambda: wn.DotGeneral(rhs="a"), "`rhs` must hold real numbers"),
    (lambda: wn.DotGeneral(rhs=[1.0, 2.0], dimension_numbers=((2,), (0,))), "must be \\(\\(lhs"),
    (
        lambda: wn.DotGeneral(rhs=[1.0, 2.0], dimension_numbers=(((2,), ()), ((), ()))),
        "as many lhs as rhs axes",
    ),
    (
        lambda: wn.DotGeneral(rhs=[1.0, 2.0], dimension_numbers=(((2,), (1,)), ((), ()))),
        "names axis 1 of `rhs`, which has 1 axes",
    ),
    (
        lambda: wn.DotGeneral(rhs=[[1.0]], dimension_numbers=(((2, 3), (0, 0)), ((), ()))),
        "names an axis of `rhs` twice",
    ),
    (
        lambda: wn.DotGeneral(rhs=[1.0] * 4, dimension_numbers=(((1,), (0,)), ((), ()))).out_shape(
            (4, 8)
        ),
        "axis 1 of the input .*the channel axis",
    ),
    (
        lambda: wn.DotGeneral(rhs=[1.0] * 4, dimension_numbers=(((0,), (0,)), ((), ()))).out_shape(
            (4, 8)
        ),
        "axis 0 of the input .*the batch axis",
    ),
    (
        lambda: wn.DotGeneral(rhs=[1.0] * 4, dimension_numbers=(((3,), (0,)), ((), ()))).out_shape(
            (4, 8)
        ),
        "spatial axes are 2..2",
    ),
    (
        lambda: wn.DotGeneral(rhs=[1.0] * 4, dimension_numbers=(((2,), (0,)), ((), ()))).out_shape(
            (4, 8)
        ),
        "input axis 2 has size 8 but axis 0 of `rhs`",
    ),
    (lambda: wn.DotGeneral(rhs=2.0, channel_axis=-1), "`channel_axis` must be 1"),
    (lambda: wn.DotGeneral(dimension_numbers=(((2,), (0,)), ((), ()))), "must be empty when"),
    (lambda: wn.ImageResize((-1, -1, 4), "cubic"), "`method` of ImageResize must be one of"),
    (lambda: wn.ImageResize((-1, 3, 4), "linear"), "resizing channels is not defined"),
    (lambda: wn.ImageResize((2, -1, 4), "linear"), "`shape\\[0\\]` \\(the batch axis\\)"),
    (lambda: wn.ImageResize((-1, -1, 0), "nearest"), "positive ints or -1"),
    (lambda: wn.ImageResize((-1, 4), "nearest"), "at least 3 entries"),
    (lambda: wn.ImageResize((-1, -1, 4, 4), "nearest").out_shape((3, 8)), "`shape` has 4 entries"),
    (lambda: wn.ImageResize((-1, -1, 4), "linear", antialias=1), "`antialias` must be True"),
    (lambda: wn.ImageResize((-1, -1, 4), "linear", batch_axis=2), "`batch_axis` must be 0"),
]


@pytest.mark.parametrize("make,match", BAD)
def test_bad_arguments_give_one_line_errors(make, match):
    with pytest.raises((ValueError, TypeError), match=match) as info:
        make()
    assert "\n" not in str(info.value)


def test_hyperparameters_compare_hash_and_rewidth():
    assert wn.Index(wn.Slice[:, 1:4]) == wn.Index((slice(None), slice(1, 4)))
    assert hash(wn.Index(wn.Slice[:, ::-1])) == hash(wn.Index(wn.Slice[:, ::-1]))
    assert wn.Index(wn.Slice[:, 1:4]) != wn.Index(wn.Slice[:, 1:5])
    assert wn.SumPool(2) != wn.AvgPool(2) and wn.GlobalSumPool() != wn.GlobalAvgPool()
    assert wn.ConvLocal(4, 3) != wn.Conv(4, 3)
    net = wn.serial(
        wn.ConvTranspose(4, 3), wn.repeat(wn.serial(wn.Relu(), wn.ConvLocal(4, 3)), 2), wn.Conv(1)
    )
    wide = net.with_widths(16)
    assert wide.layers[0].out_channels == 16
    assert wide.layers[1].layer.layers[1].out_channels == 16
    assert wide.layers[2].out_channels == 1  # the readout kept
    assert hash(wide) == hash(net.with_widths(16)) and wide == net.with_widths(16)


def test_constants_compare_by_value():
    a = wn.DotGeneral(rhs=torch.tensor([1.0, 2.0]), dimension_numbers=(((2,), (0,)), ((), ())))
    b = wn.DotGeneral(rhs=[1.0, 2.0], dimension_numbers=(((2,), (0,)), ((), ())))
    c = wn.DotGeneral(rhs=[1.0, 2.5], dimension_numbers=(((2,), (0,)), ((), ())))
    assert a == b and hash(a) == hash(b) and a != c
    assert a != wn.DotGeneral(lhs=[1.0, 2.0], dimension_numbers=(((0,), (2,)), ((), ())))
    assert repr(b) == "DotGeneral(rhs=tensor(2,), dimension_numbers=(((2,), (0,)), ((), ())))"
    assert repr(wn.DotGeneral(rhs=2)) == "DotGeneral(rhs=2.0)"
    assert wn.ImageResize((-1, -1, 4), "bilinear") == wn.ImageResize([-1, -1, 4], "linear")


@pytest.mark.parametrize("layer", [wn.ConvLocal(4, 3, b_std=0.2), wn.ConvTranspose(4, 2, 2)])
@pytest.mark.parametrize("param", ["ntk", "standard"])
def test_init_apply_redraws_as_build(layer, param):
    net = wn.serial(layer.replace(parameterization=param), wn.Flatten(), wn.Dense(2))
    built = net.build((3, 5), seed=7)
    other = net.build((3, 5), seed=8)
    wn.init.apply(other, None, seed=7)
    for (name, a), (_, b) in zip(built.named_parameters(), other.named_parameters(), strict=True):
        assert torch.equal(a, b), name
