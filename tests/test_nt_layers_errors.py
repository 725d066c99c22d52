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


@pytest.mark.parametrize("layer", [wn.ConvLocal(4, 3, b_std=0.2), wn.ConvTranspose(4, 2, 2)])
@pytest.mark.parametrize("param", ["ntk", "standard"])
def test_init_apply_redraws_as_build(layer, param):
    net = wn.serial(layer.replace(parameterization=param), wn.Flatten(), wn.Dense(2))
    built = net.build((3, 5), seed=7)
    other = net.build((3, 5), seed=8)
    wn.init.apply(other, None, seed=7)
    for (name, a), (_, b) in zip(built.named_parameters(), other.named_parameters(), strict=True):
        assert torch.equal(a, b), name
