"""Findings of Lee et al. 2020 in `widenets study`: ZCA whitening, standard against NTK
parameterisation, large learning rates and L2 (src/widenets/study/findings.py)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import widenets as wn
from _tiny_study import TINY as _BASE
from widenets.study import config, findings, stages

TINY = {**_BASE, "sgd_batch_size": 0, "linearize": False}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _correlated(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64)
    scales = torch.logspace(0, -2, d, dtype=torch.float64)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ (mix * scales) + 0.3


# ---------------------------------------------------------------------------------------------
# ZCA whitening


def test_zca_unregularised_gives_identity_covariance():
    x = _correlated(400, 12)
    xw, _ = wn.data.zca_whiten(x, None, 0.0)
    cov = torch.cov(xw.T, correction=0)
    assert torch.allclose(cov, torch.eye(12, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(xw.mean(0), torch.zeros(12, dtype=torch.float64), atol=1e-9)
    # ZCA (not PCA): the whitening matrix is symmetric, x_white = (x - mu) W with W = W^T
    w = torch.linalg.lstsq(x - x.mean(0), xw).solution
    assert torch.allclose(w, w.T, atol=1e-8)
    # without centring it is the second moment that becomes the identity
    xu, _ = wn.data.zca_whiten(x, None, 0.0, center=False)
    assert torch.allclose(xu.T @ xu / 400, torch.eye(12, dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize("eps", [0.01, 0.3, 5.0])
def test_zca_regularised_eigenvalues_closed_form(eps):
    x = _correlated(300, 10, seed=1)
    lam = np.linalg.eigvalsh(np.cov(x.numpy().T, bias=True))
    expected = np.sort(lam / (lam + eps * lam.mean()))
    xw, _ = wn.data.zca_whiten(x, None, eps)
    got = np.linalg.eigvalsh(np.cov(xw.numpy().T, bias=True))
    np.testing.assert_allclose(np.sort(got), expected, rtol=1e-8, atol=1e-12)


def test_zca_fitted_on_train_only_and_shapes():
    x = _correlated(200, 16, seed=2)
    t1, t2 = _correlated(30, 16, seed=3), _correlated(50, 16, seed=4) * 5
    a, a_test = wn.data.zca_whiten(x, t1, 0.1)
    b, b_test = wn.data.zca_whiten(x, t2, 0.1)
    assert torch.equal(a, b)  # the test set does not enter the fit
    # the test set goes through the training transform: a training example given as a test
    # example comes out as it does in the training split
    _, same = wn.data.zca_whiten(x, x[:7].clone(), 0.1)
    assert torch.allclose(same, a[:7], atol=1e-12)
    # by hand: training mean and covariance only
    mu = x.mean(0)
    cov = (x - mu).T @ (x - mu) / 200
    lam, u = torch.linalg.eigh(cov)
    w = u @ torch.diag((lam + 0.1 * lam.mean()).rsqrt()) @ u.T
    assert torch.allclose(b_test, (t2 - mu) @ w, atol=1e-10)
    # images: features flattened, shape kept, same numbers
    img, img_test = wn.data.zca_whiten(x.reshape(200, 1, 4, 4), t1.reshape(30, 1, 4, 4), 0.1)
    assert img.shape == (200, 1, 4, 4) and img_test.shape == (30, 1, 4, 4)
    assert torch.allclose(img.reshape(200, 16), a)
    assert torch.allclose(img_test.reshape(30, 16), a_test)
    assert wn.data.zca_whiten(x.float(), None, 0.1)[0].dtype == torch.float32


def test_zca_rank_deficient_and_renormalised():
    ds = wn.data.load("digits", n_train=100, n_test=20)  # per-example normalised: rank < d
    xw, xt = wn.data.zca_whiten(ds.x_train, ds.x_test, 0.0)
    assert torch.isfinite(xw).all() and torch.isfinite(xt).all()
    ev = torch.linalg.eigvalsh(torch.cov(xw.T, correction=0))
    assert ((ev.abs() < 1e-8) | ((ev - 1).abs() < 1e-8)).all()  # projected out or whitened
    xn, xtn = wn.data.zca_whiten(ds.x_train, ds.x_test, 0.1, normalize="per_example")
    for z in (xn, xtn):
        assert torch.allclose(z.mean(1), torch.zeros(()).double(), atol=1e-10)
        assert torch.allclose(z.norm(dim=1), torch.full((), 8.0).double())
    # uncentred and renormalised, eps -> inf gives back the per-example normalised inputs
    big, big_t = wn.data.zca_whiten(
        ds.x_train, ds.x_test, 1e9, center=False, normalize="per_example"
    )
    assert torch.allclose(big, ds.x_train, atol=1e-6)
    assert torch.allclose(big_t, ds.x_test, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [{"regularizer": -0.1}, {"regularizer": float("nan")}, {"normalize": "standardize"}],
)
def test_zca_bad_arguments(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        wn.data.zca_whiten(_correlated(20, 4), None, **{"regularizer": 0.1, **kwargs})


# ---------------------------------------------------------------------------------------------
# standard parameterisation


def test_standard_parameterisation_kernel_and_lr_scaling():
    ds = wn.data.load("digits", n_train=12, n_test=4)
    cfg = SimpleNamespace(depth=2, w_std=1.5, b_std=0.05, activation="relu")
    # the SP network's empirical NTK is near its (width-dependent) analytic NTK
    net = findings.standard_fc(cfg, 1024, 1)
    model = net.build((64,), seed=0, dtype=torch.float64)
    emp = wn.empirical.ntk(model, ds.x_train)
    ana = net.kernel(ds.x_train, progress=False).ntk
    assert ((emp - ana).norm() / ana.norm()).item() < 0.1
    # that NTK is affine in the width, width * A + B (the hidden layers' fan-in is the width,
    # the first layer's is the input dimension), so lr = c n / lambda_max falls like 1 / width
    k = {w: findings.standard_fc(cfg, w, 1).kernel(ds.x_train).ntk for w in (256, 1024, 4096)}
    assert torch.allclose(k[4096] - k[1024], 4 * (k[1024] - k[256]), rtol=1e-10)
    lam = {w: torch.linalg.eigvalsh(k[w])[-1].item() for w in k}
    assert lam[4096] / lam[1024] == pytest.approx(4, rel=0.02)
    assert 3 < lam[1024] / lam[256] < 4


def test_parameterization_skipped_for_non_fc():
    cfg = config.resolve({**TINY, "arch": "cnn-gap"})
    assert findings.total_steps("parameterization", cfg) == 0
    res, _ = findings.run_parameterization(cfg, None, None, None, None, 1.0, lambda n: None)
    assert "fc" in res["skipped"]


# ---------------------------------------------------------------------------------------------
# large learning rate and L2


def test_l2_training_matches_weight_decay_by_hand():
    cfg = config.resolve({**TINY, "dtype": "float64", "seeds": 1, "steps": 6})
    ds, y, y_test = stages.data_and_targets(cfg)
    net = stages.build_description(cfg, 16, 10)
    lr, l2 = 0.7, 0.05
    ref = torch.zeros(len(stages.checkpoint_steps(cfg)), *y_test.shape, dtype=torch.float64)
    trainer = stages._Trainer(cfg, ds, y, y_test, lr, ref, torch.float64, lambda n: None)
    _, f = trainer.run(net.build((64,), seed=0, dtype=torch.float64), weight_decay=l2)

    model = net.build((64,), seed=0, dtype=torch.float64)
    params = list(model.parameters())
    x, xt = ds.x_train, ds.x_test
    with torch.no_grad():
        f0, f0t = model(x), model(xt)
    for _ in range(6):
        loss = ((model(x) - f0 - y) ** 2).sum() / (2 * y.numel())
        loss = loss + l2 / 2 * sum((p**2).sum() for p in params)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p -= lr * g
    with torch.no_grad():
        by_hand = model(xt) - f0t
    assert torch.allclose(f, by_hand, atol=1e-12, rtol=1e-10)
    _, f_plain = trainer.run(net.build((64,), seed=0, dtype=torch.float64))
    assert (f - f_plain).norm() > 1e-3 * f_plain.norm()  # the decay did something


def test_lr_factor_one_and_no_l2_reproduce_the_main_network():
    cfg = config.resolve(
        {**TINY, "seeds": 1, "finding_width": 32, "lr_factors": [1.0], "l2_values": [0.0]}
    )
    ds, y, y_test = stages.data_and_targets(cfg)
    kres, K = stages.kernels_stage(cfg, ds, y, False)
    lr = kres["learning_rate"]
    inf, inf_t = stages.infinite_stage(cfg, ds, y, y_test, K, lr)
    main, _ = stages.finite_stage(cfg, ds, y, y_test, K, inf_t, lr, 32, 0)
    res, _ = findings.run("large_lr_l2", cfg, ds, y, y_test, K, lr, lambda n: None)
    assert [r["l2"] for r in res["l2_rows"]] == [0.0]
    for run in (res["lr_rows"][0]["networks"]["runs"][0], res["l2_rows"][0]["networks"]["runs"][0]):
        for key in ("accuracy", "mse", "train_loss", "distance_to_infinite"):
            assert run[key] == main["gd"][key], key
    assert res["lr_rows"][0]["learning_rate"] == lr
    assert res["kernel"]["mse"] == pytest.approx(inf["ntk_at_training_time"]["mse"], rel=1e-12)


# ---------------------------------------------------------------------------------------------
# config and end to end


@pytest.mark.parametrize(
    "key, value",
    [
        ("finding_width", -1),
        ("finding_width", 2.5),
        ("zca_regularizers", [0.1, -1.0]),
        ("zca_regularizers", []),
        ("lr_factors", [0.0]),
        ("lr_factors", "1,2"),
        ("l2_values", [float("inf")]),
        ("l2_values", [True]),
        ("findings", ["zca", "nope"]),
    ],
)
def test_bad_finding_config_names_the_key(key, value):
    with pytest.raises(ValueError, match=f"`{key}`"):
        config.resolve({key: value})


def test_end_to_end_all_findings(tmp_path):
    cfg = {
        **TINY,
        "findings": ["large_lr_l2", "zca", "parameterization"],
        "zca_regularizers": [0.0, 0.1],
        "lr_factors": [1.0, 3.0, 200.0],
        "l2_values": [0.01],
    }
    results = wn.study.run(cfg, tmp_path)
    assert results["config"]["findings"] == list(findings.FINDINGS)
    found = results["findings"]
    assert set(found) == set(findings.FINDINGS)
    for name in findings.FINDINGS:
        assert results["stages"][f"finding/{name}"]["status"] == "done"
    json.dumps(found)
    on_disk = json.loads((tmp_path / "results.json").read_text())["findings"]
    assert set(on_disk) == set(findings.FINDINGS)

    zca = found["zca"]
    assert [r["regularizer"] for r in zca["rows"]] == [None, 0.0, 0.1]
    for r in zca["rows"]:
        assert 0 <= r["kernels"]["nngp"]["accuracy"] <= 1
        assert len(r["networks"]["runs"]) == 2
    # the unwhitened row is the main study: same kernels, same networks
    assert zca["rows"][0]["kernels"]["nngp"] == results["infinite"]["nngp"]
    main = [r["gd"]["accuracy"] for r in results["finite"] if r["width"] == 32]
    assert zca["rows"][0]["networks"]["accuracy"] == pytest.approx(sum(main) / len(main))

    par = found["parameterization"]
    assert [r["width"] for r in par["rows"]] == [8, 32]
    assert par["rows"][1]["learning_rate"] < par["rows"][0]["learning_rate"]

    big = found["large_lr_l2"]
    rows = {r["lr_factor"]: r for r in big["lr_rows"]}
    assert rows[1.0]["kernel_gd_stable"] and not rows[3.0]["kernel_gd_stable"]
    assert rows[200.0]["networks"]["n_diverged"] == 2  # recorded, not a crash
    assert all(r["diverged"] and "diverged" in r["error"] for r in rows[200.0]["networks"]["runs"])
    assert [r["l2"] for r in big["l2_rows"]] == [0.0, 0.01]
    assert big["l2_rows"][0]["networks"]["accuracy"] == pytest.approx(sum(main) / len(main))

    made = {p.name for p in (tmp_path / "figures").glob("finding_*.png")}
    assert made == {f"finding_{n}.png" for n in findings.FINDINGS}
    for name in made:
        data = (tmp_path / "figures" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert set(findings.CAPTIONS) == {f"finding_{n}" for n in findings.FINDINGS}

    said = findings.statements(results)
    assert [c for c, _ in said] == [findings.CLAIMS[n] for n in findings.FINDINGS]
    for _, text in said:
        assert len(text) > 40 and "no statement" not in text
        assert "held" in text or "hold" in text
    assert "diverged at lr factor 200" in said[2][1]
    assert not math.isnan(big["l2_rows"][1]["networks"]["distance_to_infinite"])
