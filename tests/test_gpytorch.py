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
        with torch.no_grad():
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
    from botorch.acquisition import LogExpectedImprovement
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
    ei = LogExpectedImprovement(gp, best_f=y.max())(xq)
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


# ----- batched evaluation: one pass of the kernel map for every batch element -------------


def _loop_reference(net, x1, x2, get, diag=False):
    """The library's own float kernel, one batch element at a time (independent of the
    batched path)."""
    batch = torch.broadcast_shapes(x1.shape[:-2], x2.shape[:-2])
    x1b = x1.expand(*batch, *x1.shape[-2:]).reshape(-1, *x1.shape[-2:])
    x2b = x2.expand(*batch, *x2.shape[-2:]).reshape(-1, *x2.shape[-2:])
    out = []
    for a, b in zip(x1b, x2b, strict=True):
        k = getattr(net.kernel(a, None if x1 is x2 else b), get)
        out.append(k.diagonal() if diag else k)
    return torch.stack(out).reshape(*batch, *out[0].shape)


@pytest.mark.parametrize("get", ["nngp", "ntk"])
@pytest.mark.parametrize(
    "shapes",
    [((4, 3, 5), (4, 6, 5)), ((7, 1, 5), (6, 5)), ((2, 1, 3, 5), (4, 1, 5)), ((3, 5), (3, 5))],
    ids=["same-batch", "q1-vs-train", "broadcast", "no-batch"],
)
def test_batched_equals_loop_over_batch_elements(get, shapes):
    g = torch.Generator().manual_seed(5)
    x1 = torch.randn(*shapes[0], generator=g, dtype=torch.float64)
    x2 = torch.randn(*shapes[1], generator=g, dtype=torch.float64)
    net = wn.serial(
        wn.Dense(8, 1.4, 0.3), wn.Erf(), wn.Dense(8, 1.1, 0.2), wn.Relu(), wn.Dense(1, 0.9, 0.1)
    )
    kern = NetworkKernel(net, get=get).double()
    kern.w_std, kern.b_std = 1.2, 0.25
    ref_net = wn.serial(
        wn.Dense(8, 1.2, 0.25), wn.Erf(), wn.Dense(8, 1.2, 0.25), wn.Relu(), wn.Dense(1, 1.2, 0.25)
    )
    with torch.no_grad():
        got = kern(x1, x2).to_dense()
        got_same = kern(x1, x1).to_dense()
        got_diag = kern(x1, diag=True)
    torch.testing.assert_close(got, _loop_reference(ref_net, x1, x2, get), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        got_same, _loop_reference(ref_net, x1, x1, get), rtol=1e-12, atol=1e-12
    )
    torch.testing.assert_close(
        got_diag, _loop_reference(ref_net, x1, x1, get, diag=True), rtol=1e-12, atol=0
    )
    # the diagonal of an input with itself is its variance, exactly as the square's diagonal
    assert torch.equal(got_diag, got_same.diagonal(dim1=-2, dim2=-1))


def test_one_pass_of_the_kernel_map_per_call(monkeypatch):
    """A batch of 64 candidates costs one call of each layer's kernel map, not 64."""
    calls = []
    original = wn.Dense.kernel_fn

    def counting(self, k):
        calls.append(k.nngp.shape)
        return original(self, k)

    monkeypatch.setattr(wn.Dense, "kernel_fn", counting)
    kern = NetworkKernel(_net(), get="ntk").double()
    with torch.no_grad():
        out = kern(_x(64)[:, None, :], _x(9, seed=1)).to_dense()
    assert out.shape == (64, 1, 9)
    assert len(calls) == 3  # three Dense layers, each once
    assert calls[0] == (64 * 9, 1)  # every pair of the batch, listed


@pytest.mark.parametrize("get", ["nngp", "ntk"])
def test_batched_gradients_equal_the_loops(get):
    """Gradients in w_std, b_std and the inputs of a batched evaluation equal those of the
    per-element loop, and that of w_std the finite difference."""
    g = torch.Generator().manual_seed(2)
    xt = torch.randn(10, 3, generator=g, dtype=torch.float64)
    xq = torch.randn(16, 1, 3, generator=g, dtype=torch.float64)
    weights = torch.randn(16, 1, 10, generator=g, dtype=torch.float64)
    kern = NetworkKernel(_net(), get=get).double()
    kern.w_std, kern.b_std = 1.1, 0.3

    xq1 = xq.clone().requires_grad_(True)
    (kern(xq1, xt).to_dense() * weights).sum().backward()
    grads = kern.raw_w_std.grad.clone(), kern.raw_b_std.grad.clone(), xq1.grad
    kern.zero_grad()

    xq2 = xq.clone().requires_grad_(True)
    total = sum((kern(xq2[b], xt).to_dense() * weights[b]).sum() for b in range(xq.shape[0]))
    total.backward()
    torch.testing.assert_close(grads[0], kern.raw_w_std.grad, rtol=1e-10, atol=0)
    torch.testing.assert_close(grads[1], kern.raw_b_std.grad, rtol=1e-10, atol=0)
    torch.testing.assert_close(grads[2], xq2.grad, rtol=1e-10, atol=1e-14)

    def loss(w):
        kern.w_std = w
        with torch.no_grad():
            return float((kern(xq, xt).to_dense() * weights).sum())

    h = 1e-6
    fd = (loss(1.1 + h) - loss(1.1 - h)) / (2 * h)
    dw = grads[0].item() / torch.sigmoid(kern.raw_w_std).item()
    assert dw == pytest.approx(fd, rel=1e-6)
    assert abs(fd) > 1e-2


def test_hyperparameter_batch_shape_equals_loop():
    """Kernels with their own batch of hyperparameters: each batch element uses its own."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    kern = NetworkKernel(_net(), get="nngp", batch_shape=torch.Size([2])).double()
    kern.w_std = torch.tensor([0.8, 1.5], dtype=torch.float64).reshape(2, 1, 1)
    kern.b_std = torch.tensor([0.1, 0.6], dtype=torch.float64).reshape(2, 1, 1)
    xq = torch.randn(3, 2, 4, 3, generator=g, dtype=torch.float64)
    with torch.no_grad():
        got = kern(xq, x).to_dense()
    assert got.shape == (3, 2, 4, 5)
    for b, (w, s) in enumerate([(0.8, 0.1), (1.5, 0.6)]):
        torch.testing.assert_close(
            got[:, b], _loop_reference(_net(w, s), xq[:, b], x[b], "nngp"), rtol=1e-12, atol=0
        )


@pytest.mark.filterwarnings("ignore:The last_dim_is_batch argument is deprecated")
def test_last_dim_is_batch():
    x1, x2 = _x(5), _x(4, seed=1)
    kern = NetworkKernel(_net(), get="ntk").double()
    kern.w_std, kern.b_std = 1.3, 0.2
    with torch.no_grad():
        got = kern(x1, x2, last_dim_is_batch=True).to_dense()
        got_diag = kern(x1, last_dim_is_batch=True, diag=True)
    assert got.shape == (3, 5, 4)
    for f in range(3):
        ref = _net().kernel(x1[:, f : f + 1], x2[:, f : f + 1]).ntk
        torch.testing.assert_close(got[f], ref, rtol=1e-12, atol=1e-12)
        ref_same = _net().kernel(x1[:, f : f + 1]).ntk
        torch.testing.assert_close(got_diag[f], ref_same.diagonal(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("depth", [1, 3])
def test_nngp_equals_botorch_infinite_width_bnn_kernel(depth):
    """BoTorch's InfiniteWidthBNNKernel(depth) is the NNGP of depth ReLU layers between
    depth + 1 Dense layers sharing weight variance w^2 and bias variance b^2."""
    pytest.importorskip("botorch")
    from botorch.models.kernels import InfiniteWidthBNNKernel

    g = torch.Generator().manual_seed(7)
    x1 = torch.rand(6, 20, 4, generator=g, dtype=torch.float64)
    x2 = torch.rand(6, 9, 4, generator=g, dtype=torch.float64)
    layers = [wn.Dense(16, 1.0, 1.0)]
    for _ in range(depth):
        layers += [wn.Relu(), wn.Dense(16, 1.0, 1.0)]
    ours = NetworkKernel(wn.serial(*layers), get="nngp").double()
    theirs = InfiniteWidthBNNKernel(depth=depth, acos_eps=1e-15).double()
    ours.w_std, ours.b_std = 1.7, 0.4
    # (float64 tensors: BoTorch's setters round a Python float through float32)
    theirs.weight_var = torch.tensor(1.7**2, dtype=torch.float64)
    theirs.bias_var = torch.tensor(0.4**2, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(
            ours(x1, x2).to_dense(), theirs(x1, x2).to_dense(), rtol=1e-10, atol=0
        )
        torch.testing.assert_close(ours(x1, diag=True), theirs(x1, diag=True), rtol=1e-12, atol=0)


def test_network_that_cannot_list_pairs_is_looped():
    """A layer without the packed layout still gets every batch element right."""
    g = torch.Generator().manual_seed(8)
    x1 = torch.randn(3, 2, 4, generator=g, dtype=torch.float64)
    x2 = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    net = wn.serial(wn.Dense(8, 1.0, 0.1), wn.Relu(), wn.Dense(1, 1.0, 0.1))

    from widenets.layers.base import Layer

    class Opaque(Layer):  # the identity, declaring that it cannot take the packed layout
        handles_packed_pairs = False

        def kernel_fn(self, k):
            return k

    opaque = wn.serial(net, Opaque())
    assert not opaque.packs_pairs()
    kern = NetworkKernel(opaque, get="nngp").double()
    kern.w_std, kern.b_std = 1.0, 0.1
    with torch.no_grad():
        got = kern(x1, x2).to_dense()
    torch.testing.assert_close(got, _loop_reference(net, x1, x2, "nngp"), rtol=1e-12, atol=0)


def test_w_std_prior_enters_the_marginal_likelihood():
    """A prior on w_std adds log p(w_std) / n to ExactMarginalLogLikelihood, as GPyTorch does
    for a lengthscale prior; its setting closure writes w_std."""
    from gpytorch.priors import LogNormalPrior

    x = _x(8)
    y = torch.sin(x.sum(1))
    prior = LogNormalPrior(0.4, 0.5)
    values = []
    for p in (None, prior):
        lik = gpytorch.likelihoods.GaussianLikelihood().double()
        kern = NetworkKernel(_net(), get="nngp", w_std_prior=p).double()
        kern.w_std, kern.b_std = 1.3, 0.2
        model = _GP(x, y, lik, kern).double()
        mll = gpytorch.mlls.ExactMarginalLogLikelihood(lik, model)
        model.train()
        values.append(mll(model(x), y))
    names = [name for name, *_ in kern.named_priors()]
    assert names == ["w_std_prior"]
    expected = prior.log_prob(torch.tensor(1.3, dtype=torch.float64)) / 8
    torch.testing.assert_close(values[1] - values[0], expected, rtol=1e-10, atol=1e-12)
    kern.sample_from_prior("w_std_prior")  # the setting closure
    assert kern.w_std.item() != pytest.approx(1.3)
    with pytest.raises(TypeError, match="`b_std_prior` must be a gpytorch.priors.Prior"):
        NetworkKernel(_net(), b_std_prior=0.5)


def test_botorch_hartmann_example_runs_as_written():
    """examples/botorch_hartmann.py, tiny: one seed, one LogEI step, every method (about 5 s
    of CPU, most of it importing BoTorch)."""
    import pathlib
    import re
    import subprocess
    import sys

    pytest.importorskip("botorch")
    root = pathlib.Path(__file__).resolve().parents[1]
    cmd = [sys.executable, str(root / "examples" / "botorch_hartmann.py"), "--seeds", "1"]
    cmd += ["--steps", "1", "--restarts", "1", "--raw-samples", "8", "--maxiter", "5"]
    env = {**__import__("os").environ, "PYTHONPATH": str(root / "src")}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=True)
    lines = out.stdout.splitlines()
    rows = [s for s in lines if s.startswith("| ") and "±" in s and not s.startswith("| model")]
    assert len(rows) == 7  # every method
    for row in rows:  # the final simple regret of Hartmann-6 lies in [0, f*]
        regret = float(re.search(r"\| ([0-9.]+) ±", row).group(1))
        assert 0.0 <= regret <= 3.32237


def test_batched_overflow_names_the_layer():
    """A batched kernel that overflows raises the library's error naming the first layer
    whose output is not finite (as the unbatched path does), not a silent inf."""
    from widenets.errors import NonFiniteKernelError

    kern = NetworkKernel(_net(), get="nngp").double()
    x = torch.full((4, 2, 3), 1e200, dtype=torch.float64)
    with pytest.raises(NonFiniteKernelError, match=r"input kernel x.x / C of x1\[0\]"):
        kern(x, _x(3)).to_dense()


def test_lengthscale_per_input_divides_the_inputs():
    """With ard_num_dims the network sees x / lengthscale (per feature), and the lengthscale
    is learnable: its gradient is that of the kernel of the rescaled inputs."""
    g = torch.Generator().manual_seed(9)
    x1 = torch.randn(5, 2, 3, generator=g, dtype=torch.float64)
    x2 = torch.randn(4, 3, generator=g, dtype=torch.float64)
    kern = NetworkKernel(_net(), get="ntk", ard_num_dims=3).double()
    kern.w_std, kern.b_std = 1.3, 0.2
    torch.testing.assert_close(kern.lengthscale, torch.ones(1, 3, dtype=torch.float64))
    ell = torch.tensor([[0.5, 2.0, 1.5]], dtype=torch.float64)
    kern.lengthscale = ell
    with torch.no_grad():
        got = kern(x1, x2).to_dense()
        got_diag = kern(x1, diag=True)
    torch.testing.assert_close(
        got, _loop_reference(_net(), x1 / ell, x2 / ell, "ntk"), rtol=1e-12, atol=1e-12
    )
    torch.testing.assert_close(
        got_diag, _loop_reference(_net(), x1 / ell, x1 / ell, "ntk", diag=True), rtol=1e-12, atol=0
    )
    kern(x1, x2).to_dense().sum().backward()
    assert kern.raw_lengthscale.grad.abs().min() > 0


# ----- one way a tile is computed: the planner and compute.KernelWork ---------------------


@pytest.mark.parametrize("get", ["nngp", "ntk"])
@pytest.mark.parametrize("n", [9, 300])
def test_differentiable_kernel_is_net_kernels_single_tile(get, n):
    """differentiable_kernel plans one tile and computes it as net.kernel does: equal bit
    for bit to net.kernel run as one tile (one worker), and exactly symmetric for a set
    with itself (at n = 300 the input Gram's matrix product is not, in general)."""
    import widenets.compute as compute
    from widenets.executors import LocalExecutor
    from widenets.gpytorch import differentiable_kernel
    from widenets.tiling import TileRequest, plan_tiles

    net = _net(act=wn.Erf())
    x1, x2 = _x(n), _x(n // 2 + 1, seed=1)
    for a, b in ((x1, None), (x1, x2)):
        m = a.shape[0] if b is None else b.shape[0]
        plan = plan_tiles(TileRequest(n, m, b is None, "diagonal", 1), compute.budgets())
        assert plan.n_tiles == 1  # so net.kernel's single tile is the same computation
        ref = getattr(compute.evaluate_kernel(net, a, b, executor=LocalExecutor(1)), get)
        got = differentiable_kernel(net, a, b, get)
        assert torch.equal(got, ref)
    got = differentiable_kernel(net, x1, None, get)
    assert torch.equal(got, got.T)


def test_differentiable_kernel_of_a_pixel_pair_network():
    """A network that needs every pair of positions (global average pooling) gets the full
    layout, as in net.kernel (it used to raise: the single tile was always diagonal), and
    its gradient in a tensor w_std is the finite difference."""
    from widenets.gpytorch import differentiable_kernel

    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 2, 4, 4, generator=g, dtype=torch.float64)

    def net(w):
        conv = wn.Conv(3, (3, 3), w_std=w, b_std=0.1, padding="SAME")
        return wn.serial(conv, wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1, w_std=1.2))

    for get in ("nngp", "ntk"):
        got = differentiable_kernel(net(1.3), x, get=get)
        torch.testing.assert_close(got, getattr(net(1.3).kernel(x), get), rtol=1e-14, atol=0)
    w = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(differentiable_kernel(net(w), x, get="ntk").sum(), w)
    h = 1e-6
    fd = (
        differentiable_kernel(net(1.3 + h), x, get="ntk").sum()
        - differentiable_kernel(net(1.3 - h), x, get="ntk").sum()
    ) / (2 * h)
    assert grad.item() == pytest.approx(float(fd), rel=1e-6)
    assert abs(float(fd)) > 1e-2


def test_batched_layer_that_loses_the_pair_list_is_named():
    """The batched path folds the layers through compute.KernelWork, so a layer that reads
    per-input tensors directly (not through the layout API) yet accepts listed pairs gets
    the error naming handles_packed_pairs, not a broadcasting error."""
    from widenets.layers.base import Layer

    class ReadsVariances(Layer):  # multiplies by cov1 as if the kernel were (N1, N2)
        def kernel_fn(self, k):
            return k.replace(nngp=k.nngp * k.cov1[:, None])

    net = wn.serial(_net(), ReadsVariances())
    assert net.packs_pairs()
    kern = NetworkKernel(net, get="nngp").double()
    with pytest.raises(ValueError, match="handles_packed_pairs"):
        kern(_x(8).reshape(4, 2, 3), _x(5, seed=1)).to_dense()
