"""The kernel view of pruning: empirical kernels of masked networks against independent
computations, and randomly pruned, rescaled networks against the analytic kernel."""

import math

import pytest
import torch
from torch.func import functional_call, jacrev

import widenets as wn
from _mc import BIAS, Z
from widenets import prune as P
from widenets.empirical.monte_carlo import _Moments

D = torch.float64
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _x(n=4, d=8, seed=3):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=D)


def test_masked_ntk_is_the_ntk_of_the_surviving_weights():
    # independent: Jacobian of the dense network in its effective weights, multiplied by
    # d w_eff / d original = mask * scale, summed over parameters, mean over outputs
    net = wn.serial(wn.Dense(6, 1.3, 0.2), wn.Erf(), wn.Dense(3, 1.3, 0.2))
    model = net.build((5,), seed=0, dtype=D)
    ms = P.prune(model, "random", 0.4, scope="layer", rescale=True, seed=0)
    x = _x(4, 5)
    plain = net.build((5,), seed=0, dtype=D)
    scale = {}
    with torch.no_grad():
        for name in ("0", "2"):
            plain.get_submodule(name).weight.copy_(model.get_submodule(name).weight)
            scale[name] = 1 / math.sqrt(float(ms[name].double().mean()))
    params = {k: v.detach() for k, v in plain.named_parameters()}
    jac = jacrev(lambda p: functional_call(plain, p, (x,)))(params)  # (N, O, *shape)
    rows = []
    for k, j in jac.items():
        layer, kind = k.split(".")
        if kind == "weight":
            j = j * ms[layer] * scale[layer]
        rows.append(j.reshape(x.shape[0], 3, -1))
    j = torch.cat(rows, -1)
    expected = torch.einsum("aop,bop->ab", j, j) / 3
    torch.testing.assert_close(P.empirical_kernel(model, x, "ntk"), expected, rtol=1e-10, atol=0)
    # NNGP: the Gram matrix of the outputs, mean over the 3 outputs
    out = model(x).detach()
    torch.testing.assert_close(P.empirical_kernel(model, x, "nngp"), out @ out.T / 3)


@pytest.mark.parametrize("method", ["jacobian", "ntk_vector", "structured", "loop"])
def test_masked_ntk_every_method_on_a_conv_network(method):
    # the study's kernel distance relies on the empirical NTK of a masked model being that
    # of its surviving weights, whichever empirical method runs: against the Jacobian of an
    # unmasked copy at the masked weights, restricted to the kept entries
    net = wn.serial(
        wn.Conv(4, 3, stride=2, w_std=1.4, b_std=0.1, parameterization="standard"),
        wn.Relu(),
        wn.Flatten(),
        wn.Dense(3, w_std=1.0, b_std=0.1, parameterization="standard"),
    )
    model = net.build((1, 7, 7), seed=0, dtype=D)
    ms = P.prune(model, "magnitude", 0.3)
    plain = net.build((1, 7, 7), seed=0, dtype=D)
    with torch.no_grad():
        for name in ms:
            plain.get_submodule(name).weight.copy_(model.get_submodule(name).weight)
    x = torch.randn(4, 1, 7, 7, generator=torch.Generator().manual_seed(2), dtype=D)
    params = {k: v.detach() for k, v in plain.named_parameters()}
    jac = jacrev(lambda p: functional_call(plain, p, (x,)))(params)
    rows = []
    for k, j in jac.items():
        layer, kind = k.rsplit(".", 1)
        if kind == "weight":
            j = j * ms[layer]
        rows.append(j.reshape(x.shape[0], 3, -1))
    j = torch.cat(rows, -1)
    expected = torch.einsum("aop,bop->ab", j, j) / 3
    got = wn.empirical.ntk(model, x, method=method)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=0)
    unmasked = (
        torch.einsum(
            "aop,bop->ab", *(2 * [torch.cat([v.reshape(4, 3, -1) for v in jac.values()], -1)])
        )
        / 3
    )
    assert float((unmasked - expected).norm() / expected.norm()) > 0.05  # the mask matters


def test_kernel_distance_against_module_tensor_and_network():
    net = wn.serial(wn.Dense(32, 1.5, 0.1), wn.Relu(), wn.Dense(2, 1.5, 0.1))
    x = _x()
    dense = net.build((8,), seed=0, dtype=D)
    pruned = net.build((8,), seed=0, dtype=D)
    assert P.kernel_distance(dense, pruned, x, kind="ntk") == 0.0
    P.prune(pruned, "magnitude", 0.3)
    for kind in ("ntk", "nngp"):
        kd, kp = P.empirical_kernel(dense, x, kind), P.empirical_kernel(pruned, x, kind)
        expected = float((kp - kd).norm() / kd.norm())
        assert expected > 0.01
        assert P.kernel_distance(dense, pruned, x, kind=kind) == pytest.approx(expected, 1e-12)
        assert P.kernel_distance(kd, pruned, x, kind=kind) == pytest.approx(expected, 1e-12)
        analytic = getattr(net.kernel(x), kind)
        got = P.kernel_distance(net, pruned, x, kind=kind)
        assert got == pytest.approx(float((kp - analytic).norm() / analytic.norm()), 1e-12)
    with pytest.raises(ValueError, match="`kind`"):
        P.kernel_distance(dense, pruned, x, kind="cntk")
    with pytest.raises(TypeError, match="`model_dense`"):
        P.kernel_distance("dense", pruned, x)
    with pytest.raises(ValueError, match="`model_dense`.*shape"):
        P.kernel_distance(torch.eye(3, dtype=D), pruned, x)


def _mc(net, x, width, p, rescale, n_samples):
    moments = {"nngp": _Moments(), "ntk": _Moments()}
    for s in range(n_samples):
        m = net.with_widths(width).build((x.shape[1],), seed=100 + s, dtype=D)
        # hidden and readout layers (fan-in = width); the input layer's fan-in is the data's
        # dimension, which does not grow, so pruning it leaves a kernel bias at any width
        P.prune(m, "random", p, scope="layer", rescale=rescale, seed=s, layers=["2", "4"])
        for kind, mom in moments.items():
            mom.add(P.empirical_kernel(m, x, kind))
    return moments


def test_random_pruning_with_rescaling_has_the_dense_gaussian_process_limit():
    # Nait Saada et al. 2024 (as wn.init.Sparse): density 0.3, kept weights * 1/sqrt(0.3);
    # 24 networks per width, the readout Dense(16) averaging 16 outputs per network. At
    # width 256 every entry within Z standard errors (+ BIAS / width of the kernel's scale),
    # and the error smaller than at width 16.
    x = _x()
    net = wn.serial(
        wn.Dense(64, 1.5, 0.1), wn.Relu(), wn.Dense(64, 1.5, 0.1), wn.Relu(), wn.Dense(16, 1.5, 0.1)
    )
    k = net.kernel(x)
    errs = {}
    for width in (16, 256):
        moments = _mc(net, x, width, 0.3, True, 24)
        for kind, mom in moments.items():
            exact = getattr(k, kind)
            err = (mom.mean - exact).abs()
            errs[kind, width] = float(err.max() / exact.abs().max())
            if width == 256:
                allowed = Z * mom.se() + BIAS / width * exact.abs().max()
                assert bool((err <= allowed).all()), (kind, err, allowed)
    for kind in ("nngp", "ntk"):
        assert errs[kind, 256] < errs[kind, 16], errs


def test_random_pruning_without_rescaling_misses_the_dense_kernel():
    # the same test has the power to fail: without 1/sqrt(p) the kernels shrink (about p per
    # pruned layer), far outside Z standard errors
    x = _x()
    net = wn.serial(
        wn.Dense(64, 1.5, 0.1), wn.Relu(), wn.Dense(64, 1.5, 0.1), wn.Relu(), wn.Dense(16, 1.5, 0.1)
    )
    k = net.kernel(x)
    for kind, mom in _mc(net, x, 256, 0.3, False, 6).items():
        exact = getattr(k, kind)
        allowed = Z * mom.se() + BIAS / 256 * exact.abs().max()
        assert not bool(((mom.mean - exact).abs() <= allowed).all()), kind
