"""The experiment functions: data of the right shape and content, and a figure."""

import numpy as np

import widenets as wn
from widenets import theory


def test_critical_init_depth_study():
    data, fig = theory.critical_init_depth_study(depth=8, width=300, n_samples=2)
    assert data["c_map"].shape == (3, 8) and data["c_empirical"].shape == (3, 8)
    # ordered phase: correlations rise towards 1; chaotic: c* < 1
    assert data["c_star"][0] == 1.0 and data["c_star"][2] < 1.0
    assert np.all(np.abs(data["c_empirical"] - data["c_map"]) < 0.1)
    assert fig.axes


def test_pseudo_iid_study():
    schemes = {"orthogonal": wn.init.Orthogonal(), "sparse": wn.init.Sparse(0.3)}
    data, fig = theory.pseudo_iid_study(widths=(8, 128), n_samples=8, schemes=schemes)
    for name in schemes:
        assert data["error"][name].shape == (2,)
        assert data["error"][name][1] < data["error"][name][0]
    assert fig.axes


def test_lazy_rich_study():
    data, fig = theory.lazy_rich_study(alphas=(0.1, 10.0), widths=(16,), steps=30)
    assert data["kernel_distance"].shape == (2, 1)
    assert data["kernel_distance"][1, 0] < data["kernel_distance"][0, 0]
    assert data["weight_change"][1, 0] < data["weight_change"][0, 0]
    assert len(fig.axes) >= 2
