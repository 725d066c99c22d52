"""The finite faces of the layers added for Neural Tangents users against their kernels:
Monte Carlo over networks built by ``net.build`` (NNGP and NTK within Z = 4.5 standard
errors plus an O(1/width) allowance, the error shrinking with width; ``tests/_mc.py``)."""

from __future__ import annotations

import pytest
import torch
from tests._mc import assert_converges, images

import widenets as wn


def _net(*middle, readout=None):
    return wn.serial(
        wn.Conv(8, 3, w_std=1.4, b_std=0.2),
        *middle,
        *([wn.GlobalAvgPool()] if readout is None else readout),
        wn.Dense(64, w_std=1.1),
    )


CASES = {
    "sum_pool": _net(wn.Relu(), wn.Conv(8, 2, w_std=1.2), wn.SumPool(2, stride=1), wn.Relu()),
    "global_sum_pool": _net(wn.Relu(), readout=[wn.GlobalSumPool()]),
    "fan_in_prod": _net(
        wn.fan_out(2),
        wn.parallel(wn.Conv(8, 3, w_std=1.2), wn.serial(wn.Erf(), wn.Conv(8, 1, b_std=0.3))),
        wn.fan_in_prod(),
        readout=[wn.Flatten()],
    ),
    "repeat": _net(wn.repeat(wn.serial(wn.Relu(), wn.Conv(8, 3, w_std=1.3)), 2), wn.Relu()),
    "index": _net(wn.Relu(), wn.Index(wn.Slice[:, ::-2]), wn.Conv(8, 2, w_std=1.2), wn.Relu()),
    "index_to_features": _net(wn.Relu(), wn.Index(wn.Slice[:, 1]), readout=[]),
    "conv_transpose": _net(
        wn.Relu(), wn.ConvTranspose(8, 3, stride=2, w_std=1.2, b_std=0.1), wn.Relu()
    ),
    "conv_transpose_valid_standard": _net(
        wn.Relu(),
        wn.ConvTranspose(8, 2, padding="valid", b_std=0.3, parameterization="standard"),
        wn.Erf(),
        readout=[wn.Flatten()],
    ),
    "conv_local": _net(wn.Relu(), wn.ConvLocal(8, 3, w_std=1.2, b_std=0.1), wn.Relu()),
    "dot_general_contracts": _net(
        wn.DotGeneral(
            rhs=[[0.9, -0.4], [1.2, 0.3], [-0.5, 1.1], [0.2, 0.8]],
            dimension_numbers=(((2,), (0,)), ((), ())),
        ),
        wn.Relu(),
    ),  # fmt: skip
    "dot_general_lhs_pairs": _net(
        wn.DotGeneral(
            lhs=[[1.3, -0.2], [0.4, 0.9], [-0.8, 0.5], [0.6, 1.0]],
            dimension_numbers=(((), ()), ((0,), (2,))),
        ),
        wn.Erf(),
        readout=[wn.Flatten()],
    ),  # fmt: skip
    "image_resize_linear": _net(wn.ImageResize((-1, -1, 7), "linear"), wn.Relu()),
    "image_resize_antialias": _net(
        wn.ImageResize((-1, -1, 3), "linear"), wn.Relu(), readout=[wn.Flatten()]
    ),
    "image_resize_nearest": _net(
        wn.Relu(),
        wn.ImageResize((-1, -1, 6), "nearest"),
        wn.Conv(8, 2, w_std=1.2),
        wn.Relu(),
        readout=[wn.Flatten()],
    ),
    "conv_local_standard": _net(
        wn.Relu(),
        wn.ConvLocal(8, 2, stride=2, padding="circular", b_std=0.3, parameterization="standard"),
        wn.Erf(),
        readout=[wn.Flatten()],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_monte_carlo_nngp(name):
    assert_converges(CASES[name], images(spatial=(4,)), "nngp", widths=(4, 48), n_samples=24)


#: the NTK by Monte Carlo takes seconds a case: in the fast suite only where the layer has
#: its own NTK rule (the affine layers, the product rule); the others are marked slow
FAST_NTK = {
    "fan_in_prod",
    "conv_transpose_valid_standard",
    "conv_local_standard",
    "dot_general_contracts",
    "image_resize_linear",
}


@pytest.mark.parametrize(
    "name", [n if n in FAST_NTK else pytest.param(n, marks=pytest.mark.slow) for n in CASES]
)
def test_monte_carlo_ntk(name):
    widths = (2, 32) if name.startswith("conv_local") else (4, 32)
    assert_converges(CASES[name], images(n=2, spatial=(4,)), "ntk", widths=widths, n_samples=12)


def test_conv_local_in_2d_matches_its_kernel_off_the_spatial_diagonal():
    """Untied weights: distinct positions of a ConvLocal output are uncorrelated (the full
    layout's off-diagonal entries vanish), and the pooled kernel sees only the diagonal."""
    net = wn.serial(wn.Conv(8, 3, w_std=1.4), wn.Relu(), wn.ConvLocal(8, (2, 3), b_std=0.1),
                    wn.Relu(), wn.GlobalAvgPool(), wn.Dense(64))  # fmt: skip
    assert_converges(net, images(n=2, spatial=(3, 4)), "nngp", widths=(2, 48), n_samples=24)


def test_repeat_draws_each_repetition_afresh():
    """As Neural Tangents' repeat: n independent copies (not weight-tied), the kernel of
    serial(*[layer] * n)."""
    block = wn.serial(wn.Relu(), wn.Conv(8, 3, w_std=1.3))
    x = images(spatial=(4,))
    a = wn.serial(wn.Conv(8, 3), wn.repeat(block, 3), wn.Flatten(), wn.Dense(1)).kernel(x)
    b = wn.serial(wn.Conv(8, 3), block, block, block, wn.Flatten(), wn.Dense(1)).kernel(x)
    assert torch.equal(a.nngp, b.nngp) and torch.equal(a.ntk, b.ntk)
    m = wn.repeat(block, 3).build((8, 4), seed=0)
    weights = [p for name, p in m.named_parameters() if name.endswith("weight")]
    assert len(weights) == 3
    assert not torch.equal(weights[0], weights[1])
