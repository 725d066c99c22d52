"""The layers added for Neural Tangents users (SumPool, GlobalSumPool, FanInProd, repeat,
Index, ConvTranspose, ConvLocal, DotGeneral, ImageResize) against Neural Tangents 0.6.5's
kernels of the same networks, stored in ``tests/data/nt_layers.npz`` by
``bench/nt_parity.py --layers --write-reference`` (so this test needs no Neural Tangents).
The networks are defined once, for both libraries, in ``bench/nt_layer_cases.py``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "tests" / "data" / "nt_layers.npz"

#: relative to the kernel's largest entry: both libraries in float64
TOL = 1e-13
#: the NTK on the diagonal of K(x1, x1): Neural Tangents' correlation there is a few ulp off 1
#: (it computes x.x / d twice) and the ReLU NTK's arccos turns that into ~1e-9 (see
#: bench/nt_parity.py's note); widenets' is exactly 1
DIAGONAL_NTK_TOL = 1e-8


def _cases():
    spec = importlib.util.spec_from_file_location(
        "nt_layer_cases", ROOT / "bench" / "nt_layer_cases.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.CASES


CASES = _cases()


@pytest.fixture(scope="module")
def reference():
    with np.load(REFERENCE) as data:
        return {k: data[k] for k in data.files}


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_every_case_has_a_reference(reference):
    labels = {k.split("/")[0] for k in reference if "/" in k}
    assert labels == {label for label, _, _ in CASES}


@pytest.mark.parametrize("label,make", [(c[0], c[1]) for c in CASES], ids=[c[0] for c in CASES])
def test_kernel_equals_neural_tangents(reference, label, make):
    x1, x2 = (torch.from_numpy(reference[n]) for n in ("x1", "x2"))
    net = make()
    k12, k11 = net.kernel(x1, x2), net.kernel(x1)
    off = ~np.eye(len(x1), dtype=bool)
    nt = {n: reference[f"{label}/{n}"] for n in ("nngp12", "ntk12", "nngp11", "ntk11")}
    assert _rel(k12.nngp.numpy(), nt["nngp12"]) < TOL
    assert _rel(k12.ntk.numpy(), nt["ntk12"]) < TOL
    assert _rel(k11.nngp.numpy()[off], nt["nngp11"][off]) < TOL
    assert _rel(k11.ntk.numpy()[off], nt["ntk11"][off]) < TOL
    assert _rel(np.diag(k11.nngp.numpy()), np.diag(nt["nngp11"])) < TOL
    assert _rel(np.diag(k11.ntk.numpy()), np.diag(nt["ntk11"])) < DIAGONAL_NTK_TOL


def _packable():
    import widenets as wn

    conv = wn.Conv(3, 3, w_std=1.3, b_std=0.2)
    return {
        "index": wn.serial(conv, wn.Relu(), wn.Index(wn.Slice[:, 1:5, ::-2]), conv),
        "conv_transpose": wn.serial(conv, wn.Erf(), wn.ConvTranspose(3, 2, stride=2, b_std=0.1)),
        "conv_local": wn.serial(conv, wn.Relu(), wn.ConvLocal(3, 3, b_std=0.1)),
        "fan_in_prod": wn.serial(conv, wn.fan_out(2), wn.parallel(conv, conv), wn.fan_in_prod()),
        "repeat": wn.serial(conv, wn.repeat(wn.serial(wn.Relu(), conv), 2)),
        "dot_general": wn.serial(
            conv,
            wn.DotGeneral(
                rhs=[0.5, -1.0, 2.0, 0.3, 1.1], dimension_numbers=(((), ()), ((3,), (0,)))
            ),
        ),
        "image_resize_nearest": wn.serial(conv, wn.ImageResize((-1, -1, 4, 7), "nearest")),
    }


@pytest.mark.parametrize("name", list(_packable()))
def test_packed_pairs_equal_tiles_bit_for_bit(name):
    """These layers take the packed layout of a set with itself without declaring anything
    (written with the layout API); the result equals the tiled one bit for bit."""
    import widenets as wn

    net = wn.serial(_packable()[name], wn.Conv(3, 1), wn.Relu(), wn.Flatten(), wn.Dense(1))
    assert net.packs_pairs()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((9, 2, 6, 5)))
    packed, tiled = net.kernel(x), net.kernel(x, batch_size=(4, 3))
    for field in ("nngp", "ntk"):
        assert torch.equal(getattr(packed, field), getattr(tiled, field)), field
