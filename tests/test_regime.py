"""wn.theory.regime: zero at initialisation; lazy versus rich; width in NTK parameterisation."""

import numpy as np
import pytest
import torch

import widenets as wn
from widenets.theory import regime
from widenets.theory.studies import make_task, train_scaled

NET = wn.serial(wn.Dense(64), wn.Relu(), wn.Dense(64), wn.Relu(), wn.Dense(1))


def test_zero_for_untrained_network():
    x, y = make_task(8)
    model = NET.build((4,), seed=0, dtype=torch.float64)
    r = regime.compare(regime.snapshot(model), model, x, y)
    assert r.kernel_distance == 0.0
    assert all(v == 0.0 for v in r.relative_weight_change.values())
    assert all(v["rank"] == 0 for v in r.weight_change_rank.values())
    assert r.alignment_initial == r.alignment_final


def test_measures_by_hand():
    k = torch.eye(3, dtype=torch.float64)
    assert regime.kernel_distance(k, 5 * k) == pytest.approx(0.0, abs=1e-15)
    assert regime.kernel_distance(k, torch.ones(3, 3)) == pytest.approx(1 - 3 / (3**0.5 * 3))
    y = torch.tensor([1.0, -1.0, 1.0])
    assert regime.kernel_target_alignment(torch.outer(y, y), y) == pytest.approx(1.0)
    a = {"w": torch.zeros(4, 5) + 1}
    b = {"w": a["w"] + torch.outer(torch.ones(4), torch.arange(5.0))}  # rank-1 change
    assert regime.weight_change_rank(a, b)["w"]["rank"] == 1
    with pytest.raises(ValueError, match="same shape"):
        regime.kernel_distance(k, torch.eye(2))


def test_lazy_versus_rich_and_width():
    x, y = make_task(12)
    dist = {}
    for alpha in (0.1, 10.0):
        for width in (16, 256):
            m0, mt = train_scaled(NET, x, y, alpha, width=width, steps=60, lr=0.5)
            dist[alpha, width] = regime.compare(m0, mt, x).kernel_distance
    # large alpha (lazy) moves the kernel less than small alpha (rich), at both widths
    assert dist[10.0, 16] < dist[0.1, 16] and dist[10.0, 256] < dist[0.1, 256]
    # in NTK parameterisation the kernel moves less at larger width
    assert dist[0.1, 256] < dist[0.1, 16] and dist[10.0, 256] < dist[10.0, 16]


def test_trajectory():
    x, y = make_task(8)
    model = NET.build((4,), seed=0, dtype=torch.float64)
    snaps = [regime.snapshot(model)]
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    for _ in range(3):
        for _ in range(10):
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()
        snaps.append(regime.snapshot(model))
    t = regime.trajectory(snaps, x, y)
    assert t["kernel_distance"][0] == 0 and np.all(np.diff(t["mean_relative_weight_change"]) > 0)
    assert len(t["alignment"]) == 4
