"""DEQ layer: the equilibrium kernel against wide finite DEQs and deep weight-tied nets.

Monte-Carlo: the test network is serial(DEQ(n), Dense(n)) with a wide readout, so the
empirical NNGP averages n output channels. At each width the estimate must lie within
Z = 5 standard errors of the analytic kernel (entrywise) and the mean relative error must
fall from width 64 to 512 (8x wider: about 2.8x less noise; we ask 1.6x).

The finite NTK is computed exactly at finite width by implicit differentiation written as
linear algebra (below), independently of the infinite-width formula under test, and is
checked against torch.autograd through the module's adjoint backward.
"""

import math
import re

import pytest
import torch

import widenets as wn

Z = 5.0
WIDTHS = (32, 512)
N_SAMPLES = 24


@pytest.fixture
def x(inputs):
    return inputs[:4]


def _net(act, width, w_std=0.8, depth=None):
    return wn.serial(
        wn.DEQ(width, act, w_std=w_std, u_std=1.1, b_std=0.2, depth=depth),
        wn.Dense(width, w_std=1.0, b_std=0.1),
    )


def finite_ntk(model, x):
    """Exact per-channel NTK of serial(DEQ, Dense) at finite width, by linear algebra.

    With h* = s_w W z* + s_u U x + s_b b and D = diag phi'(h*), the gradient of output a
    w.r.t. h* is G_a = (I - D (s_w W)^T)^{-1} D s_v V_a (implicit function theorem), and
    Theta = mean_a <G_a, G'_a> (s_w^2 z.z' + s_u^2 x.x' + s_b^2) + s_v^2 z.z' + s_c^2.
    """
    deq, dense = model[0], model[1]
    with torch.no_grad():
        z = deq(x)
        h = (z @ deq.weight.T) * deq.weight_scale + deq.injection(x)
        hr = h.detach().requires_grad_()
        with torch.enable_grad():
            (d,) = torch.autograd.grad(deq.fn(hr).sum(), hr)
        sw, sv = deq.weight_scale, dense.weight_scale
        w = deq.weight * sw
        n = w.shape[0]
        g = []
        for i in range(x.shape[0]):
            a = torch.eye(n, dtype=x.dtype) - d[i][:, None] * w.T
            g.append(torch.linalg.solve(a, d[i][:, None] * (sv * dense.weight.T)))  # (n, O)
        g = torch.stack(g)  # (N, n, O)
        gg = torch.einsum("ika,jka->ij", g, g) / g.shape[2]
        zz = z @ z.T
        inner = sw**2 * zz + deq.input_scale**2 * (x @ x.T) + deq.bias_scale**2
        return gg * inner + sv**2 * zz + dense.bias_scale**2


def _monte_carlo(act, x, width, w_std=0.8):
    net = _net(act, width, w_std)
    nngp, ntk = [], []
    for s in range(N_SAMPLES):
        model = net.build(x.shape[1:], seed=100 + s, dtype=torch.float64)
        with torch.no_grad():
            f = model(x)
        nngp.append(f @ f.T / f.shape[1])
        ntk.append(finite_ntk(model, x))
    out = {}
    for name, vals in (("nngp", nngp), ("ntk", ntk)):
        v = torch.stack(vals)
        out[name] = (v.mean(0), v.std(0) / math.sqrt(len(vals)))
    return out


@pytest.mark.parametrize("act", [wn.Relu(), wn.Erf()], ids=["relu", "erf"])
def test_fixed_point_kernel_matches_wide_finite_deqs(act, x):
    errs = {}
    for width in WIDTHS:
        k = _net(act, width).kernel(x)
        mc = _monte_carlo(act, x, width)
        for name in ("nngp", "ntk"):
            exact = getattr(k, name)
            est, se = mc[name]
            z = ((est - exact).abs() / se.clamp_min(1e-12)).max().item()
            assert z < Z, f"{name} at width {width}: {z:.2f} standard errors off"
            errs[(name, width)] = ((est - exact).abs().mean() / exact.abs().mean()).item()
    for name in ("nngp", "ntk"):
        small, large = errs[(name, WIDTHS[0])], errs[(name, WIDTHS[1])]
        assert large < small / 1.6, f"{name}: error {small:.4f} -> {large:.4f} did not shrink"


def test_autograd_through_module_is_the_implicit_gradient(x):
    """The adjoint backward of the module gives the exact finite-width NTK."""
    net = _net(wn.Relu(), 32)
    model = net.build(x.shape[1:], seed=7, dtype=torch.float64)
    params = list(model.parameters())
    jac = []
    for i in range(x.shape[0]):
        out = model(x[i : i + 1])[0]
        rows = []
        for a in range(out.shape[0]):
            gs = torch.autograd.grad(out[a], params, retain_graph=True)
            rows.append(torch.cat([g.reshape(-1) for g in gs]))
        jac.append(torch.stack(rows))
    jac = torch.stack(jac)  # (N, O, P)
    ntk = torch.einsum("iap,jap->ij", jac, jac) / jac.shape[1]
    torch.testing.assert_close(ntk, finite_ntk(model, x), rtol=1e-9, atol=1e-9)
    assert model[0].iterations > 1 and model[0].residual < 1e-10


@pytest.mark.parametrize("act", [wn.Relu(), wn.Erf(), wn.Elementwise(torch.tanh, degree=16)])
def test_deep_weight_tied_kernel_tends_to_fixed_point(act, x):
    """Depth-L weight-tied kernels approach the equilibrium kernel geometrically in L."""
    k = _net(act, 8, w_std=1.0).kernel(x)
    errs = []
    for depth in (2, 4, 8, 16, 32):
        kd = _net(act, 8, w_std=1.0, depth=depth).kernel(x)
        errs.append(max((kd.nngp - k.nngp).abs().max().item(), (kd.ntk - k.ntk).abs().max()))
    assert all(b < a for a, b in zip(errs, errs[1:], strict=False)), errs
    assert errs[-1] < 1e-3 * errs[0]


def test_deq_of_kinked_elementwise_matches_the_closed_form(x):
    """The equilibrium through ReLU by the split rule (``kinks=(0.0,)``) is the closed-form
    ReLU one to 1e-8 relative, NNGP and NTK."""
    exact = _net(wn.Relu(), 8).kernel(x)
    split = _net(wn.Elementwise(torch.relu, kinks=(0.0,)), 8).kernel(x)
    for name in ("nngp", "ntk"):
        a, b = getattr(exact, name), getattr(split, name)
        assert ((a - b).abs() / a.abs()).max().item() < 1e-8, name


def test_finite_weight_tied_network_matches_its_kernel_and_approaches_deq(x):
    """Finite depth-L weight-tied nets: Monte-Carlo NNGP matches the depth-L kernel, and
    the finite DEQ's outputs are the limit of the unrolled net's (same weights)."""
    width = 256
    net = _net(wn.Relu(), width, depth=6)
    k = net.kernel(x, get="nngp")
    mc = wn.empirical.monte_carlo(net, x, n_samples=N_SAMPLES, seed=5, get="nngp")
    z = ((mc.nngp - k.nngp).abs() / mc.nngp_se).max().item()
    assert z < Z, z
    deq = _net(wn.Relu(), width).build(x.shape[1:], seed=3, dtype=torch.float64)
    gaps = []
    for depth in (5, 10, 20, 40):
        tied = _net(wn.Relu(), width, depth=depth).build(x.shape[1:], seed=3, dtype=torch.float64)
        with torch.no_grad():
            gaps.append((tied(x) - deq(x)).abs().max().item())
    assert gaps[-1] < 1e-6 * max(gaps[0], 1e-300) or gaps[-1] < 1e-10, gaps


def test_min_eigenvalue_strictly_positive_for_distinct_inputs(inputs):
    for act in (wn.Relu(), wn.Erf()):
        k = wn.serial(wn.DEQ(16, act, w_std=0.9, u_std=1.0, b_std=0.0)).kernel(inputs)
        lam = wn.theory.min_eigenvalue(k)
        lam_ntk = wn.theory.min_eigenvalue(k, get="ntk")
        assert lam > 1e-6 and lam_ntk > 1e-6, (lam, lam_ntk)
    # a repeated input makes it singular (zero up to round-off)
    xx = torch.cat([inputs[:3], inputs[:1]])
    k = wn.serial(wn.DEQ(16, wn.Relu(), w_std=0.9)).kernel(xx)
    assert abs(wn.theory.min_eigenvalue(k)) < 1e-12


def test_non_contractive_map_is_an_error(x):
    with pytest.raises(ValueError, match="not contractive at w_std=1.5"):
        _net(wn.Relu(), 16, w_std=1.5).kernel(x)
    # finite face: iteration count and residual are available
    with pytest.raises(wn.FixedPointError) as info:
        _net(wn.Erf(), 64, w_std=6.0).build(x.shape[1:], seed=0)(x.float())
    assert info.value.iterations > 1 and info.value.residual > 1e-3


def test_bad_arguments():
    with pytest.raises(TypeError, match="activation"):
        wn.DEQ(8, torch.relu)
    with pytest.raises(ValueError, match="w_std"):
        wn.DEQ(8, wn.Relu(), w_std=-1.0)
    with pytest.raises(ValueError, match="width"):
        wn.DEQ(0, wn.Relu())
    with pytest.raises(ValueError, match="tol"):
        wn.DEQ(8, wn.Relu(), tol=0.0)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        wn.DEQ(8, wn.Relu()).kernel(torch.randn(3, 2, 5))


def test_kernel_does_not_depend_on_tiles(inputs):
    net = wn.serial(wn.DEQ(8, wn.Relu(), w_std=1.2, b_std=0.1), wn.Dense(1))
    full = net.kernel(inputs)
    tiled = net.kernel(inputs, batch_size=3)
    cross = net.kernel(inputs[:3], inputs[3:], batch_size=(2, 3))
    for name in ("nngp", "ntk"):
        scale = getattr(full, name).abs().max()
        torch.testing.assert_close(
            getattr(tiled, name), getattr(full, name), rtol=0, atol=1e-12 * scale
        )
        torch.testing.assert_close(
            getattr(cross, name), getattr(full, name)[:3, 3:], rtol=0, atol=1e-12 * scale
        )


def test_slow_but_contractive_map_says_how_many_iterations_it_needs():
    """ReLU at w_std 1.41 < sqrt(2) contracts (rate w^2/2 = 0.994): the error says it
    converges slowly and how many iterations it needs, and that many suffice; w_std 1.5
    does not contract and is called so."""
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"converges, but slowly.*Raise `max_iter` to (\d+)") as e:
        wn.serial(wn.DEQ(8, wn.Relu(), w_std=1.41, max_iter=2000), wn.Dense(1)).kernel(x)
    needed = int(re.search(r"Raise `max_iter` to (\d+)", str(e.value)).group(1))
    assert 2000 < needed < 10_000 and "not contractive" not in str(e.value)
    k = wn.serial(wn.DEQ(8, wn.Relu(), w_std=1.41, max_iter=needed), wn.Dense(1)).kernel(x)
    assert torch.isfinite(k.nngp).all()
    with pytest.raises(ValueError, match="not contractive at w_std=1.5"):
        wn.serial(wn.DEQ(8, wn.Relu(), w_std=1.5, max_iter=2000), wn.Dense(1)).kernel(x)
