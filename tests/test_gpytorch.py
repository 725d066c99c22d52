"""GPyTorch kernels: equal to net.kernel, gradients in w_std/b_std, ExactGP training."""

import math

import pytest
import torch

import widenets as wn

gpytorch = pytest.importorskip("gpytorch")
from widenets.gpytorch import NetworkKernel  # noqa: E402


def _net(w=1.3, b=0.2, act=None):
    act = act or wn.Relu()
    return wn.serial(wn.Dense(64, w, b), act, wn.Dense(64, w, b), act, wn.Dense(1, w, b))


def _x(n, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("get", ["nngp", "ntk"])
@pytest.mark.parametrize("act", [wn.Relu(), wn.Erf(), wn.Gelu(), wn.LeakyRelu(0.2)], ids=repr)
def test_kernel_equals_net_kernel(get, act):
    x1, x2 = _x(6), _x(4, seed=1)
    kern = NetworkKernel(_net(act=act), get=get).double()
    # initial values from the network (stored in float32 raw parameters until .double())
    assert kern.w_std.item() == pytest.approx(1.3, rel=1e-6)
    assert kern.b_std.item() == pytest.approx(0.2, rel=1e-6)
    kern.w_std, kern.b_std = 1.3, 0.2  # exact in float64
    with torch.no_grad():
        got = kern(x1, x2).to_dense()
        got_same = kern(x1).to_dense()
        got_diag = kern(x1, diag=True)
    ref = _net(act=act).kernel(x1, x2)
    ref_same = _net(act=act).kernel(x1)
    torch.testing.assert_close(got, getattr(ref, get), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_same, getattr(ref_same, get), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_diag, getattr(ref_same, get).diagonal(), rtol=1e-12, atol=0)
    # a new value of the hyperparameters is the kernel of the network with those scales
    kern.w_std, kern.b_std = 0.9, 0.5
    with torch.no_grad():
        got = kern(x1, x2).to_dense()
    torch.testing.assert_close(got, getattr(_net(0.9, 0.5, act).kernel(x1, x2), get))


def test_network_without_bias_keeps_none():
    net = wn.serial(wn.Dense(8, 1.2), wn.Relu(), wn.Dense(1, 1.2))
    kern = NetworkKernel(net, get="nngp").double()
    kern.w_std = 1.2
    x = _x(5)
    with torch.no_grad():
        torch.testing.assert_close(kern(x).to_dense(), net.kernel(x).nngp)
    # b_std does not enter: its gradient is exactly zero
    kern(x).to_dense().sum().backward()
    assert kern.raw_b_std.grad is None or float(kern.raw_b_std.grad.abs().sum()) == 0.0


@pytest.mark.parametrize("get", ["nngp", "ntk"])
@pytest.mark.parametrize(
    "act", [wn.Relu(), wn.Erf(), wn.Elementwise(torch.tanh, degree=24)], ids=repr
)
def test_hyperparameter_gradients_match_finite_differences(get, act):
    x1, x2 = _x(5), _x(3, seed=2)
    weights = torch.linspace(-1, 1, 15, dtype=torch.float64).reshape(5, 3)
    kern = NetworkKernel(_net(act=act), get=get).double()

    def loss(w, b):
        kern.w_std, kern.b_std = w, b
        return float((kern(x1, x2).to_dense() * weights).sum())

    w0, b0 = 1.1, 0.3
    kern.w_std, kern.b_std = w0, b0
    out = (kern(x1, x2).to_dense() * weights).sum()
    gw, gb = torch.autograd.grad(out, [kern.raw_w_std, kern.raw_b_std])
    # chain rule through softplus: d std / d raw = sigmoid(raw)
    dw = gw.item() / torch.sigmoid(kern.raw_w_std).item()
    db = gb.item() / torch.sigmoid(kern.raw_b_std).item()
    h = 1e-6
    fd_w = (loss(w0 + h, b0) - loss(w0 - h, b0)) / (2 * h)
    fd_b = (loss(w0, b0 + h) - loss(w0, b0 - h)) / (2 * h)
    assert dw == pytest.approx(fd_w, rel=1e-6, abs=1e-8)
    assert db == pytest.approx(fd_b, rel=1e-6, abs=1e-8)
    assert abs(fd_w) > 1e-3 and abs(fd_b) > 1e-3  # the check is not vacuous


class _GP(gpytorch.models.ExactGP):
    def __init__(self, x, y, likelihood, kernel):
        super().__init__(x, y, likelihood)
        self.mean_module = gpytorch.means.ZeroMean()
        self.covar_module = kernel

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


def test_exact_gp_trains_and_marginal_likelihood_rises():
    torch.manual_seed(0)
    x = torch.linspace(-2, 2, 40, dtype=torch.float64)[:, None]
    x = torch.cat([x, torch.ones_like(x)], 1)  # a constant feature, as a bias input
    y = torch.sin(3 * x[:, 0]) + 0.05 * torch.randn(40, dtype=torch.float64)
    likelihood = gpytorch.likelihoods.GaussianLikelihood().double()
    kern = NetworkKernel(_net(w=1.0, b=0.1), get="ntk").double()
    model = _GP(x, y, likelihood, kern).double()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)
    model.train()
    likelihood.train()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    history = []
    w_start = kern.w_std.item()
    for _ in range(60):
        opt.zero_grad()
        loss = -mll(model(x), y)
        loss.backward()
        assert kern.raw_w_std.grad is not None and torch.isfinite(kern.raw_w_std.grad).all()
        opt.step()
        history.append(-loss.item())
    assert history[-1] > history[0] + 0.5
    assert all(math.isfinite(h) for h in history)
    assert kern.w_std.item() != pytest.approx(w_start, abs=1e-3)  # the scales were learned
    model.eval()
    likelihood.eval()
    with torch.no_grad():
        xt = torch.stack([torch.linspace(-1.5, 1.5, 7, dtype=torch.float64)] * 2, 1)
        xt[:, 1] = 1.0
        pred = likelihood(model(xt))
    assert (pred.mean - torch.sin(3 * xt[:, 0])).abs().max() < 0.3


def test_botorch_single_task_gp():
    botorch = pytest.importorskip("botorch")
    from botorch.acquisition import ExpectedImprovement
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP

    x = torch.rand(12, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y = (torch.sin(4 * x[:, :1]) + x[:, 1:] ** 2).to(torch.float64)
    kern = NetworkKernel(_net(w=1.2, b=0.3), get="nngp")
    gp = SingleTaskGP(x, y, covar_module=kern)
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(gp.likelihood, gp)
    fit_gpytorch_mll(mll)
    # a batched acquisition evaluation (b, q, d) with gradients with respect to the inputs
    xq = torch.rand(4, 1, 2, dtype=torch.float64, requires_grad=True)
    ei = ExpectedImprovement(gp, best_f=y.max())(xq)
    ei.sum().backward()
    assert ei.shape == (4,) and torch.isfinite(xq.grad).all()
    assert botorch is not None


def test_bad_arguments():
    with pytest.raises(TypeError, match="`net` must be a widenets network"):
        NetworkKernel(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="`get` must be"):
        NetworkKernel(_net(), get="both")
    with pytest.raises(ValueError, match="nothing to learn"):
        NetworkKernel(wn.Relu())


@pytest.mark.parametrize("layer", ["conv", "dense"])
def test_tensor_w_std_given_to_the_layer_keeps_its_gradient(layer):
    """A 0-dim tensor w_std passed to Conv (as to Dense) stays a tensor, so the kernel's
    gradient in it is the finite difference; Conv used to turn it into a float, dropping its
    share of the gradient silently."""
    from widenets.gpytorch import differentiable_kernel

    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 2, 5, 5, generator=g, dtype=torch.float64)

    def kernel(w):
        first = (
            wn.Conv(3, (3, 3), w_std=w, b_std=0.1)
            if layer == "conv"
            else wn.serial(wn.Flatten(), wn.Dense(3, w_std=w, b_std=0.1))
        )
        net = wn.serial(first, wn.Relu(), wn.Flatten(), wn.Dense(1, w_std=1.2))
        return differentiable_kernel(net, x, get="ntk").sum()

    w = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(kernel(w), w)
    h = 1e-6
    fd = (kernel(1.3 + h) - kernel(1.3 - h)) / (2 * h)
    assert grad.item() == pytest.approx(float(fd), rel=1e-6)
    assert abs(float(fd)) > 1e-2
