"""Smooth activations (Tanh, Sigmoid, Swish/SiLU, Softplus, Mish) and Elementwise with
declared kinks: quadrature kernels against an independent reference (nested adaptive
quadrature of functions written with ``math``, ``tests/_gauss_reference.py``, stored on a
grid in ``tests/data/smooth_reference.json`` and recomputed here at a few points) and
against the closed forms of ReLU, Abs and LeakyRelu: to 1e-8 relative at pre-activation
variances 1e-2 to 10 (16 for the kinks) and correlations up to +-1."""

import json
import math

import pytest
import torch

import widenets as wn
from _gauss_reference import FUNCTIONS, PATH, reference
from widenets.layers.quadrature import hermite_nodes, pair_by_split, split_nodes

STORED = json.loads(PATH.read_text())
CASES = {name: (getattr(wn, name)(**kw), f, df) for name, (kw, f, df) in FUNCTIONS.items()}


def _t(v):
    return torch.tensor(v, dtype=torch.float64)


def _pair(layer, q1, q2, c):
    out, dot = layer.pair(_t(c * math.sqrt(q1 * q2)), _t(q1), _t(q2), True)
    return out.item(), dot.item()


def _rel_err(got, ref, scale):
    """Error relative to the value, or to 1e-3 of the Cauchy-Schwarz scale
    sqrt(E[f(u)^2] E[f(v)^2]) where the value is smaller (the kernel is ~0 there)."""
    return abs(got - ref) / max(abs(ref), 1e-3 * scale)


@pytest.mark.parametrize("name", list(CASES))
def test_kernel_matches_stored_reference_to_1e8_relative(name):
    """Every stored point (variances 1e-2..10, equal and unequal; c from -1 to 1, |c| within
    1e-12 of 1) in one batched call, NNGP and Kdot."""
    layer = CASES[name][0]
    rows = torch.tensor(STORED["values"][name]["rows"], dtype=torch.float64)
    q1, q2, c = rows[:, 0], rows[:, 1], rows[:, 2]
    out, dot = layer.pair(c * q1.sqrt() * q2.sqrt(), q1, q2, True)
    self_ = STORED["values"][name]["self"]
    worst = 0.0
    for k, got in enumerate((out, dot)):
        for row, g in zip(rows.tolist(), got.tolist(), strict=True):
            scale = math.sqrt(self_[repr(row[0])][k] * self_[repr(row[1])][k])
            worst = max(worst, _rel_err(g, row[3 + k], scale))
    assert worst < 1e-8, worst


LIVE_POINTS = [(10.0, 10.0, -0.9999), (10.0, 10.0, 1.0), (10.0, 2.0, 0.6), (0.01, 10.0, 0.3)]


@pytest.mark.parametrize("name", list(CASES))
def test_kernel_matches_adaptive_quadrature_computed_here(name):
    layer, f, df = CASES[name]
    for q1, q2, c in LIVE_POINTS:
        out, dot = _pair(layer, q1, q2, c)
        for got, g in ((out, f), (dot, df)):
            ref = reference(g, q1, q2, c)
            scale = math.sqrt(reference(g, q1, q1, 1.0) * reference(g, q2, q2, 1.0))
            assert _rel_err(got, ref, scale) < 1e-8, (name, q1, q2, c)


@pytest.mark.slow
def test_stored_reference_is_what_the_script_computes():
    for name, (_, f, df) in FUNCTIONS.items():
        for q1, q2, c, r0, r1 in STORED["values"][name]["rows"][::17]:
            assert abs(reference(f, q1, q2, c) - r0) <= 1e-13 * max(1.0, abs(r0))
            assert abs(reference(df, q1, q2, c) - r1) <= 1e-13 * max(1.0, abs(r1))


@pytest.mark.parametrize("name", list(CASES))
def test_finite_face_and_derivative_are_the_functions(name):
    layer, f, df = CASES[name]
    x = torch.linspace(-30, 30, 601, dtype=torch.float64)
    module = wn.serial(wn.Dense(3), layer).build((2,), seed=0)[1]
    assert torch.allclose(
        module(x),
        torch.tensor([f(v) for v in x.tolist()], dtype=torch.float64),
        rtol=1e-13,
        atol=1e-14,
    )
    assert torch.allclose(
        layer.derivative(x),
        torch.tensor([df(v) for v in x.tolist()], dtype=torch.float64),
        rtol=1e-13,
        atol=1e-14,
    )


def test_rule_converges_and_the_default_is_converged():
    """The split rule is not exact: 24 points per interval are visibly off at q = 10, the
    default 64 agree with the reference and with two panels of 64 to 1e-12."""
    layer, f, _ = CASES["Tanh"]
    ref = reference(f, 10.0, 10.0, 0.999)
    k, q = _t(0.999 * 10.0), _t(10.0)

    def rule(panels, points):
        return pair_by_split(layer.fn, None, k, q, q, False, (0.0,), panels, points)[0].item()

    assert abs(rule(1, 24) - ref) > 1e-7
    assert abs(rule(1, 64) - ref) < 1e-12 and abs(rule(2, 64) - rule(1, 64)) < 1e-12
    assert _pair(layer, 10.0, 10.0, 0.999)[0] == rule(1, 64)


def test_declared_hyperparameters_and_errors():
    assert wn.Swish(beta=1.5) == wn.Swish(beta=1.5) and wn.Swish() != wn.Swish(beta=2.0)
    assert hash(wn.Tanh()) == hash(wn.Tanh())
    assert repr(wn.Softplus(beta=2.0)) == "Softplus(beta=2.0)"
    with pytest.raises(ValueError, match="`panels`"):
        wn.Tanh(panels=0)
    with pytest.raises(ValueError, match="`beta`"):
        wn.Softplus(beta=-1.0)


def test_network_kernel_diagonal_and_symmetry():
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    net = wn.serial(wn.Dense(8, w_std=2.0, b_std=0.3), wn.Mish(), wn.Dense(1))
    k = net.kernel(x)
    assert torch.equal(k.nngp, k.nngp.T)
    assert torch.isfinite(k.ntk).all()


@pytest.mark.parametrize(
    "act", [wn.Softplus(), wn.Elementwise(torch.relu, kinks=(0.0,)), wn.Elementwise(torch.tanh)]
)
def test_zero_input_without_bias_gives_the_kernel_of_a_zero_pre_activation(act):
    """Both variances 0 (a zero input, no bias): c is 0, not 0/0, so the kernel is
    phi(0) E[phi(v)] against the others and phi(0)^2 with itself."""
    x = torch.tensor([[0.0, 0.0], [1.0, -2.0]], dtype=torch.float64)
    k = wn.serial(wn.Dense(8, w_std=1.5), act).kernel(x)
    f0 = act.fn(torch.zeros((), dtype=torch.float64)).item()
    q = 1.5**2 * 5.0 / 2.0
    z, w = hermite_nodes(200, torch.float64)
    mean = (act.fn(math.sqrt(q) * z) @ w).item()  # E[phi(v)], v ~ N(0, q)
    assert k.nngp[0, 0].item() == pytest.approx(f0 * f0, rel=1e-14, abs=1e-300)
    assert k.nngp[0, 1].item() == pytest.approx(f0 * mean, rel=1e-8, abs=1e-300)


def test_elementwise_panels_rule_converges_where_gauss_hermite_stalls():
    """Elementwise(fn, panels=...) (no kinks): composite Gauss-Legendre on [-9, 9]; at
    q = 10 on tanh it meets the reference to 1e-8 where 128-point Gauss-Hermite is off by
    > 1e-5."""
    _, f, _ = CASES["Tanh"]
    ref = reference(f, 10.0, 10.0, 0.999)
    assert abs(_pair(wn.Elementwise(torch.tanh, panels=16), 10.0, 10.0, 0.999)[0] - ref) < 1e-8
    assert abs(_pair(wn.Elementwise(torch.tanh), 10.0, 10.0, 0.999)[0] - ref) > 1e-5


# ----- Elementwise with declared kinks -------------------------------------------------------

# variances whose square roots are exact, so c = K / sqrt(q1 q2) is recovered exactly and the
# closed forms see the correlation the rule sees (1 + c is ill-conditioned near c = -1)
EXACT_VARIANCES = [(1 / 64, 1 / 64), (1.0, 1.0), (16.0, 16.0), (1 / 16, 16.0), (16.0, 1.0)]
KINK_CORRELATIONS = [-1.0, -1 + 1e-12, -0.9999, -0.9, 0.0, 0.5, 0.99, 0.9999, 1 - 1e-8, 1.0]


def _arccos(q1, q2, c):
    """ReLU's NNGP and Kdot (Cho & Saul 2009) written with math."""
    theta = math.acos(c)
    nngp = math.sqrt(q1 * q2) * (math.sin(theta) + (math.pi - theta) * c) / (2 * math.pi)
    return nngp, (math.pi - theta) / (2 * math.pi)


@pytest.mark.parametrize(
    "fn, closed",
    [
        (torch.relu, wn.Relu()),
        (torch.abs, wn.Abs()),
        (lambda x: torch.where(x > 0, x, 0.2 * x), wn.LeakyRelu(0.2)),
    ],
    ids=["relu", "abs", "leaky"],
)
def test_kinked_elementwise_matches_closed_forms_to_1e8(fn, closed):
    layer = wn.Elementwise(fn, kinks=(0.0,))
    worst = 0.0
    for q1, q2 in EXACT_VARIANCES:
        for c in KINK_CORRELATIONS:
            got = _pair(layer, q1, q2, c)
            exact = _pair(closed, q1, q2, c)
            for k in range(2):
                scale = math.sqrt(q1 * q2) if k == 0 else 1.0
                worst = max(worst, _rel_err(got[k], exact[k], scale))
            if closed == wn.Relu():
                ref = _arccos(q1, q2, c)
                for k in range(2):
                    scale = math.sqrt(q1 * q2) if k == 0 else 1.0
                    assert _rel_err(got[k], ref[k], scale) < 1e-8, (q1, q2, c, k)
    assert worst < 1e-8, worst


def test_relu_network_kernel_through_kinks_matches_the_closed_form():
    """NNGP and NTK of a two-layer network: split rule 1e-8 relative entrywise, where the
    default Gauss-Hermite rule is off by ~1e-3 (README)."""
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def net(act):
        return wn.serial(wn.Dense(8, w_std=1.5, b_std=0.1), act, wn.Dense(1, w_std=1.5))

    exact = net(wn.Relu()).kernel(x * 2.0)
    split = net(wn.Elementwise(torch.relu, kinks=(0.0,))).kernel(x * 2.0)
    for name in ("nngp", "ntk"):
        a, b = getattr(exact, name), getattr(split, name)
        assert ((a - b).abs() / a.abs()).max().item() < 1e-8, name


@pytest.mark.parametrize("q1, q2, c", [(3.0, 3.0, 0.999), (0.5, 8.0, -0.6), (10.0, 2.0, 0.3)])
def test_kinks_away_from_zero_match_adaptive_quadrature(q1, q2, c):
    """Hard tanh (kinks at -1 and 1), derivative a step pair, against nested adaptive
    quadrature split at the same kinks."""
    layer = wn.Elementwise(lambda x: x.clamp(-1.0, 1.0), kinks=(1.0, -1.0))
    f = lambda x: min(max(x, -1.0), 1.0)  # noqa: E731
    df = lambda x: 1.0 if -1.0 < x < 1.0 else 0.0  # noqa: E731
    out, dot = _pair(layer, q1, q2, c)
    assert abs(out - reference(f, q1, q2, c, (-1.0, 1.0))) < 1e-9
    assert abs(dot - reference(df, q1, q2, c, (-1.0, 1.0))) < 1e-9


@pytest.mark.parametrize("breaks", [[], [0.0], [-1.5, 2.0], [-30.0, 0.3]])
def test_split_nodes_integrate_normal_moments(breaks):
    """With any break points (none, inside, outside [-9, 9]) the rule gives E[1] = 1,
    E[z] = 0, E[z^2] = 1, E[z^4] = 3 of the standard normal to 1e-14."""
    z, w = split_nodes(torch.tensor([breaks], dtype=torch.float64).reshape(1, -1), 1, 64)
    assert z.shape == (1, (len(breaks) + 1) * 64)
    for power, moment in ((0, 1.0), (1, 0.0), (2, 1.0), (4, 3.0)):
        assert abs((w * z**power).sum().item() - moment) < 1e-14, (power, breaks)


def test_kinks_are_checked_and_shown():
    layer = wn.Elementwise(torch.relu, kinks=[0, 1.0, 0.0])
    assert layer.kinks == (0.0, 1.0)
    assert repr(layer) == "Elementwise(relu, kinks=(0.0, 1.0))"
    assert layer != wn.Elementwise(torch.relu)
    with pytest.raises(TypeError, match="`kinks` must be a sequence of real numbers"):
        wn.Elementwise(torch.relu, kinks=("a",))
    with pytest.raises(ValueError, match="`kinks` must be finite"):
        wn.Elementwise(torch.relu, kinks=(math.inf,))


def test_elementwise_degree_is_capped_where_hermite_weights_overflow():
    with pytest.raises(ValueError, match="`degree` must be at most 360"):
        wn.Elementwise(torch.tanh, degree=400)
    assert repr(wn.Elementwise(torch.tanh, panels=4)) == "Elementwise(tanh, panels=4)"
