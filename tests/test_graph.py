"""Aggregate (graph kernels): Neural Tangents' values, the closed form, sparse = dense,
tiles, Monte Carlo of the finite GNN, and errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import widenets as wn
from _finite_mc import mc_kernels
from _nt_structures import CASES, kernel_kwargs

REFS = json.loads((Path(__file__).parent / "data" / "nt_structures.json").read_text())


def rel(a, b):
    b = np.asarray(b)
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c[2] != "masked"])
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


def graphs(n, c=3, v=5, seed=0, weighted=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, v, generator=g, dtype=torch.float64)
    a = (torch.rand(n, v, v, generator=g) < 0.4).double()
    if weighted:
        a = a * (0.5 + torch.rand(n, v, v, generator=g, dtype=torch.float64))
    return x, a


def test_closed_form_is_pt_k_p():
    x1, a1 = graphs(3, seed=1)
    x2, a2 = graphs(2, seed=2)
    k = wn.Aggregate().kernel(x1, x2, pattern=(a1, a2), get="nngp")
    n1, n2 = x1.numpy(), x2.numpy()
    ref = np.zeros((3, 2, 5, 5))
    for i in range(3):
        for j in range(2):
            ref[i, j] = a1[i].numpy().T @ (n1[i].T @ n2[j] / 3) @ a2[j].numpy()
    assert np.abs(k.nngp.numpy() - ref).max() < 1e-13 * np.abs(ref).max()


def test_set_with_itself_and_tiles_agree():
    x, a = graphs(5, seed=3)
    net = CASES["gin_dense"][0]()
    whole = net.kernel(x, pattern=a)
    tiled = net.kernel(x, pattern=a, batch_size=2)
    cross = net.kernel(x, x.clone(), pattern=(a, a.clone()))
    for k in (tiled, cross):
        for f in ("nngp", "ntk"):
            assert torch.allclose(getattr(k, f), getattr(whole, f), rtol=1e-14, atol=0)
    # the same inputs with other graphs are another set: not the kernel of x with itself
    other = net.kernel(x, x, pattern=(a, a.flip(0)))
    assert not torch.allclose(other.nngp, whole.nngp)


def edge_list(n, v, e, seed):
    g = torch.Generator().manual_seed(seed)
    arcs = torch.randint(0, v, (n, e, 2), generator=g)
    arcs[0, -2:] = -1
    dense = torch.zeros(n, v, v, dtype=torch.float64)
    for b in range(n):
        for s, r in arcs[b].tolist():
            if s >= 0 and r >= 0:
                dense[b, s, r] += 1
    return arcs, dense


def test_sparse_equals_dense_both_faces():
    x, _ = graphs(3, seed=4)
    arcs, dense = edge_list(3, 5, 9, seed=5)
    sparse_net, dense_net = CASES["gin_sparse"][0](), CASES["gin_dense"][0]()
    ks, kd = sparse_net.kernel(x, pattern=arcs), dense_net.kernel(x, pattern=dense)
    assert torch.allclose(ks.ntk, kd.ntk, rtol=1e-14, atol=0)
    ms = sparse_net.build((3, 5), seed=0, dtype=torch.float64)
    md = dense_net.build((3, 5), seed=0, dtype=torch.float64)
    with wn.graph_pattern(arcs):
        ys = ms(x)
    assert torch.allclose(ys, _run(md, x, dense), rtol=1e-12)


def _run(model, x, pattern):
    with wn.graph_pattern(pattern):
        return model(x)


def test_module_is_pattern_product():
    x, a = graphs(2, seed=6)
    m = wn.Aggregate().build((3, 5), seed=0, dtype=torch.float64)
    assert torch.allclose(m(x, pattern=a), torch.einsum("ncv,nvw->ncw", x, a), rtol=1e-14)
    # 2-D vertices, the last axis only: rows of each image aggregated on their own
    x2 = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    a2 = torch.rand(2, 5, 5, dtype=torch.float64)
    m2 = wn.Aggregate(aggregate_axis=3).build((3, 4, 5), seed=0, dtype=torch.float64)
    assert torch.allclose(m2(x2, pattern=a2), torch.einsum("nchv,nvw->nchw", x2, a2))


def test_monte_carlo_of_the_finite_gnn():
    """A GIN of width 256 (the update x + A x as one Aggregate over A + I): NNGP and NTK
    of 64 finite networks within 5 standard errors plus a 2/width allowance of the
    kernel's scale (the O(1/width) bias)."""
    x, a = graphs(4, seed=7)
    a = a + torch.eye(5, dtype=torch.float64)
    width, samples = 256, 64
    net = wn.serial(
        wn.Conv(width, 1, w_std=1.3, b_std=0.4),
        wn.Aggregate(),
        wn.Relu(),
        wn.Aggregate(),
        wn.Conv(width, 1, w_std=1.3, b_std=0.4),
        wn.Relu(),
        wn.GlobalAvgPool(),
        wn.Dense(1, w_std=1.3, b_std=0.4),
    )
    exact = net.kernel(x, pattern=a)
    nngp, nngp_se, ntk, ntk_se = mc_kernels(
        lambda s: net.build((3, 5), seed=s, dtype=torch.float64),
        lambda m: _run(m, x, a)[:, 0],
        4,
        samples,
    )
    for mc, se, ref in ((nngp, nngp_se, exact.nngp), (ntk, ntk_se, exact.ntk)):
        allowed = 5 * se + 2.0 / width * ref.abs().max()
        assert bool(((mc - ref).abs() <= allowed).all()), (mc, ref, se)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: wn.Aggregate(batch_axis=1), "`batch_axis` must be 0"),
        (lambda: wn.Aggregate(channel_axis=-1), "`channel_axis` must be 1"),
        (lambda: wn.Aggregate(implementation="csr"), "`implementation` must be one of"),
        (lambda: wn.Aggregate(aggregate_axis="2"), "`aggregate_axis` must be None"),
        (lambda: wn.Aggregate(to_dense=3), "`to_dense` must be None or a function"),
    ],
)
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_patterns_are_named():
    x, a = graphs(3)
    net = wn.serial(wn.Conv(4, 1), wn.Aggregate(), wn.GlobalAvgPool())
    with pytest.raises(ValueError, match="needs the inputs' graphs"):
        net.kernel(x)
    with pytest.raises(ValueError, match="must be a pair"):
        net.kernel(x, x[:2], pattern=a)
    with pytest.raises(ValueError, match="one graph per input"):
        net.kernel(x, pattern=a[:2])
    with pytest.raises(ValueError, match=r"must have shape \(N, X..., X...\)"):
        net.kernel(x, pattern=a[:, :4, :4])
    with pytest.raises(ValueError, match="aggregate_axis"):
        wn.Aggregate(aggregate_axis=1).kernel(x, pattern=a)
    with pytest.raises(ValueError, match="NaN or inf"):
        net.kernel(x, pattern=a * float("nan"))
    sparse = wn.serial(wn.Conv(4, 1), wn.Aggregate(implementation="sparse"), wn.GlobalAvgPool())
    with pytest.raises(ValueError, match="integer arcs"):
        sparse.kernel(x, pattern=a)
    arcs = torch.tensor([[[0, 5]]] * 3)
    with pytest.raises(ValueError, match="vertex index past"):
        sparse.kernel(x, pattern=arcs)
    m = net.build((3, 5), seed=0)
    with pytest.raises(ValueError, match="graph_pattern"):
        m(x.float())


def test_graph_classification_example_beats_chance():
    """examples/graph_classification.py: structure-only classes (equal expected edge
    counts) on 100 test graphs; chance is 0.5 with a standard error of 0.05."""
    import importlib.util

    path = Path(__file__).parents[1] / "examples" / "graph_classification.py"
    spec = importlib.util.spec_from_file_location("graph_classification", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    acc = mod.main()
    assert acc["nngp"] > 0.6, acc


def test_declared_hyperparameters():
    assert wn.Aggregate() == wn.Aggregate() and hash(wn.Aggregate()) == hash(wn.Aggregate())
    assert wn.Aggregate() != wn.Aggregate(implementation="sparse")
    assert repr(wn.Aggregate(aggregate_axis=(2, 3))) == "Aggregate(aggregate_axis=(2, 3))"


def test_an_overflowing_graph_is_diagnosed_at_its_layer():
    """The NaN/inf diagnosis re-runs the bad pair with its graphs (it used to fail for lack
    of them, with the 'needs the inputs' graphs' error)."""
    x, a = graphs(3, seed=8)
    net = wn.serial(wn.Conv(4, 1), wn.Aggregate(), wn.Relu(), wn.GlobalAvgPool())
    with pytest.raises(wn.numerics.NonFiniteKernelError, match="Aggregate"):
        net.kernel(x, pattern=a * 1e200)
