"""wn.theory.signal: critical points, fixed points, maps against finite networks."""

import math

import numpy as np
import pytest
import torch

import widenets as wn
from widenets.theory import signal as S

TANH = wn.Elementwise(torch.tanh, degree=64, name="tanh")  # smooth: 64 nodes suffice


def test_relu_critical_point():
    # E[relu'(u)^2] = 1/2, so chi_1 = w^2 / 2: critical at w^2 = 2, and with b = 0 every
    # variance is a fixed point (He et al. 2015).
    assert S.chi_1(wn.Relu(), math.sqrt(2), 0.0) == pytest.approx(1.0, abs=1e-14)
    assert S.edge_of_chaos(wn.Relu(), 0.0) == pytest.approx(math.sqrt(2), rel=1e-12)
    assert S.q_star(wn.Relu(), math.sqrt(2), 0.0, q0=3.0) == pytest.approx(3.0)
    # below: q* = b^2 / (1 - w^2 / 2) exactly; above: divergent
    assert S.q_star(wn.Relu(), 1.2, 0.1) == pytest.approx(0.01 / (1 - 0.72), rel=1e-12)
    assert S.q_star(wn.Relu(), 1.5, 0.1) == math.inf


def test_erf_edge_at_zero_bias_closed_form():
    # erf'(0) = 2/sqrt(pi) and q* = 0 at b = 0: chi_1 = 4 w^2 / pi = 1 at w = sqrt(pi) / 2
    assert S.edge_of_chaos(wn.Erf(), 0.0) == pytest.approx(math.sqrt(math.pi) / 2, rel=1e-10)
    assert S.edge_of_chaos(TANH, 0.0) == pytest.approx(1.0, rel=1e-10)


@pytest.mark.parametrize("act", [wn.Erf(), TANH], ids=repr)
def test_chi1_is_one_along_edge_of_chaos(act):
    b = np.array([0.02, 0.1, 0.3, 0.7])
    w = S.edge_of_chaos(act, b)
    assert np.all(np.isfinite(w)) and np.all(np.diff(w) > 0)
    np.testing.assert_allclose(S.chi_1(act, w, b), 1.0, rtol=0, atol=1e-8)
    # and it separates the phases
    assert np.all(S.chi_1(act, 0.95 * w, b) < 1) and np.all(S.chi_1(act, 1.05 * w, b) > 1)


@pytest.mark.parametrize(
    "act,w,b", [(wn.Erf(), 1.7, 0.3), (TANH, 1.6, 0.05), (wn.Gelu(), 1.2, 0.2), (TANH, 0.9, 0.4)]
)
def test_q_star_and_c_star_against_direct_iteration(act, w, b):
    # direct iteration; the iterates must have stopped moving (converged) before comparing
    q = 1.0
    for _ in range(300):
        q_prev, q = q, S.variance_map(q, act, w, b)
    assert abs(q - q_prev) < 1e-13
    assert S.q_star(act, w, b) == pytest.approx(q, rel=1e-9)
    c = 0.5
    for _ in range(300):
        c_prev, c = c, S.correlation_map(c, act, w, b, q=q)
    assert abs(c - c_prev) < 1e-10
    assert S.c_star(act, w, b) == pytest.approx(c, abs=1e-8)


def test_chaotic_and_ordered_c_star():
    assert S.c_star(TANH, 0.8, 0.1) == 1.0  # ordered
    assert S.c_star(TANH, 2.5, 0.0) == 0.0  # odd activation without bias, chaotic
    assert 0 < S.c_star(TANH, 2.5, 0.1) < 1
    d = S.depth_scales(TANH, 2.5, 0.1)
    assert 0 < d.xi_c < math.inf and 0 < d.chi_c < 1
    w = S.edge_of_chaos(TANH, 0.1)
    assert S.depth_scales(TANH, w * 1.001, 0.1).xi_c > 20 * d.xi_c  # diverges at the edge


@pytest.mark.parametrize("act,w,b", [(wn.Erf(), 1.6, 0.2), (TANH, 1.2, 0.1), (wn.Relu(), 1.3, 0.1)])
def test_maps_against_monte_carlo_propagation(act, w, b):
    # Per-layer q^l and c^l of width-1000 random networks (4 draws) against the maps.
    r = S.propagate(act, w, b, depth=6, width=1000, n_samples=4, c0=0.3, seed=1)
    zq = np.abs(r["q_empirical"] - r["q_map"]) / r["q_se"]
    zc = np.abs(r["c_empirical"] - r["c_map"]) / r["c_se"]
    # finite-width bias is O(1/n) = 1e-3, far below the SE; allow 5 SE.
    assert zq.max() < 5 and zc.max() < 5, (zq, zc)
    assert np.all(np.abs(r["c_empirical"] - r["c_map"]) < 0.05)


def test_phase_diagram_arrays_and_figure():
    w = np.linspace(0.5, 3.0, 12)
    b = np.linspace(0.0, 0.5, 5)
    pd = S.phase_diagram(wn.Erf(), w, b)
    assert pd.chi_1.shape == (5, 12) and pd.q_star.shape == (5, 12)
    assert np.all((pd.chi_1 < 1) == (pd.c_star == 1.0))
    np.testing.assert_allclose(S.chi_1(wn.Erf(), pd.critical_w_std, b), 1.0, atol=1e-8)
    assert pd.figure.axes


def test_bad_input():
    with pytest.raises(ValueError, match="w_std_range.*empty"):
        S.phase_diagram(wn.Erf(), [], [0.0, 0.1])
    with pytest.raises(ValueError, match="b_std_range.*empty"):
        S.phase_diagram(wn.Erf(), [1.0], np.array([]))
    with pytest.raises(ValueError, match="no infinite-width kernel"):
        S.chi_1(wn.Dense(3), 1.0, 0.0)
    with pytest.raises(ValueError, match="no infinite-width kernel"):
        S.q_star(wn.Activation(), 1.0, 0.0)
    with pytest.raises(TypeError, match="activation"):
        S.q_star("relu", 1.0, 0.0)
    with pytest.raises(ValueError, match="non-negative"):
        S.q_star(wn.Erf(), -1.0, 0.0)
