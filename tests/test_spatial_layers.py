"""AvgPool, LayerNorm, Dropout, GlobalSelfAttention and residual: Monte-Carlo convergence
(NNGP and NTK, within stated standard errors, error shrinking with width) and bad input."""

import pytest
import torch
from tests._mc import Z, assert_converges, images
from torch.func import functional_call, jacrev

import widenets as wn


def _net(*middle, readout=None):
    return wn.serial(
        wn.Conv(8, 3, w_std=1.4, b_std=0.2),
        *middle,
        readout or wn.GlobalAvgPool(),
        wn.Dense(64, w_std=1.1),
    )


CASES = {
    "avgpool": _net(wn.Relu(), wn.Conv(8, 2, w_std=1.3), wn.AvgPool(2, stride=1), wn.Relu()),
    "layernorm_channels": _net(wn.LayerNorm(), wn.Relu(), readout=wn.Flatten()),
    "layernorm_space": _net(wn.LayerNorm("channels+space"), wn.Erf()),
    "attention": _net(
        wn.Relu(),
        wn.Conv(8, 1, w_std=1.2),
        wn.GlobalSelfAttention(8, 8, 8, 2, w_query_std=0.8, w_value_std=1.2, b_std=0.1),
        wn.Relu(),
    ),
    "residual": _net(
        wn.residual(wn.Relu(), wn.Conv(8, 3, w_std=1.2), branch_scale=0.8, shortcut_scale=0.6),
        wn.Relu(),
        readout=wn.Flatten(),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_monte_carlo_nngp(name):
    assert_converges(CASES[name], images(spatial=(4,)), "nngp", widths=(4, 48), n_samples=24)


@pytest.mark.parametrize("name", list(CASES))
def test_monte_carlo_ntk(name):
    assert_converges(CASES[name], images(n=2, spatial=(4,)), "ntk", widths=(4, 32), n_samples=12)


def _batch_ntk(model, x):
    """Empirical NTK with one forward pass for the whole batch (one dropout mask draw)."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    jac = jacrev(lambda p: functional_call(model, p, (x,)))(params)
    out = 0
    for j in jac.values():
        j = j.flatten(2)  # (N, O, P)
        out = out + torch.einsum("iop,jop->ij", j, j) / j.shape[1]
    return out


def test_dropout_monte_carlo_nngp_and_ntk():
    """Dropout's kernel raises the variance (diagonal) by 1/(1 - rate) and leaves the
    covariance of different inputs unchanged; checked against finite networks in train
    mode (fresh masks every forward pass)."""
    rate = 0.4
    net = wn.serial(
        wn.Conv(8, 3, w_std=1.4, b_std=0.2),
        wn.Relu(),
        wn.Dropout(rate),
        wn.Flatten(),
        wn.Dense(48, w_std=1.1),
    )
    x = images(n=3, spatial=(4,))
    k = net.kernel(x)
    no_drop = wn.serial(*[layer for layer in net.layers if not isinstance(layer, wn.Dropout)])
    k0 = no_drop.kernel(x)
    # the exact correction (closed form of the layer, independent of the MC below)
    off = ~torch.eye(3, dtype=torch.bool)
    assert torch.allclose(k.nngp[off], k0.nngp[off])
    assert not torch.allclose(torch.diagonal(k.nngp), torch.diagonal(k0.nngp))
    torch.manual_seed(0)
    errs = []
    for width, n in ((4, 24), (48, 24)):
        wide = net.with_widths(width)
        nngps, ntks = [], []
        for s in range(n):
            m = wide.build((2, 4), seed=100 * width + s, dtype=torch.float64)
            with torch.no_grad():
                f = m(x)
            nngps.append(f @ f.T / f.shape[1])
            ntks.append(_batch_ntk(m, x))
        for est, exact in ((torch.stack(nngps), k.nngp), (torch.stack(ntks), k.ntk)):
            mean, se = est.mean(0), est.std(0) / n**0.5
            err = (mean - exact).abs()
            errs.append(err.max() / exact.abs().max())
            if width == 48:
                assert (err <= Z * se + 2.0 / width * exact.abs().max()).all(), (err, se)
    assert errs[2] < errs[0] and errs[3] < errs[1], errs


def test_dropout_eval_mode_is_identity():
    net = wn.serial(wn.Dense(8), wn.Relu(), wn.Dropout(0.5, mode="test"), wn.Dense(1))
    ref = wn.serial(wn.Dense(8), wn.Relu(), wn.Dense(1))
    x = images(n=3, c=4, spatial=())
    torch.testing.assert_close(net.kernel(x).nngp, ref.kernel(x).nngp)
    m = wn.Dropout(0.5).build((4,))
    m.eval()
    torch.testing.assert_close(m(x.float()), x.float())


def test_residual_scaling_exact():
    """K = branch_scale^2 K_branch + shortcut_scale^2 K_shortcut."""
    x = images(n=3, spatial=(5,))
    branch = wn.serial(wn.Conv(8, 3, w_std=1.3), wn.Relu())
    a, b = 0.7, 1.9
    res = wn.serial(wn.Conv(8, 3), wn.residual(branch, branch_scale=a, shortcut_scale=b))
    k = res.kernel(x)
    kb = wn.serial(wn.Conv(8, 3), branch).kernel(x)
    ks = wn.Conv(8, 3).kernel(x)
    torch.testing.assert_close(k.nngp, a**2 * kb.nngp + b**2 * ks.nngp)
    torch.testing.assert_close(k.ntk, a**2 * kb.ntk + b**2 * ks.ntk)


def test_pooling_window_that_does_not_fit():
    with pytest.raises(ValueError, match="pooling window of size 5 does not fit"):
        wn.serial(wn.Conv(4, 3), wn.AvgPool(5), wn.Flatten()).kernel(torch.randn(2, 1, 4, 4))
    with pytest.raises(ValueError, match="pooling window"):
        wn.AvgPool((2, 6)).build((3, 4, 4))


def test_global_pool_needs_spatial_axes():
    with pytest.raises(ValueError, match="spatial axes"):
        wn.serial(wn.Dense(4), wn.GlobalAvgPool()).kernel(torch.randn(3, 5))


def test_attention_over_a_non_sequence():
    att = wn.GlobalSelfAttention(8, 8, 8, 2)
    with pytest.raises(ValueError, match="sequence"):
        wn.serial(wn.Dense(4), att).kernel(torch.randn(3, 5))
    with pytest.raises(ValueError, match="sequence"):
        wn.serial(wn.Dense(4), att).build((5,))


def test_attention_without_linear_scaling_has_no_kernel():
    att = wn.GlobalSelfAttention(8, 8, 8, 2, linear_scaling=False)
    net = wn.serial(wn.Conv(4, 3), att, wn.GlobalAvgPool())
    with pytest.raises(ValueError, match="no closed form"):
        net.kernel(torch.randn(2, 2, 5))
    assert net.build((2, 5))(torch.randn(2, 2, 5)).shape == (2, 8)


def test_layernorm_needs_gaussian_input():
    with pytest.raises(ValueError, match="Gaussian"):
        wn.serial(wn.Conv(4, 3), wn.Relu(), wn.LayerNorm()).kernel(torch.randn(2, 2, 5))
    with pytest.raises(ValueError, match="over"):
        wn.LayerNorm("batch")


def test_dropout_bad_rate():
    with pytest.raises(ValueError, match="rate"):
        wn.Dropout(1.0)
    with pytest.raises(ValueError, match="mode"):
        wn.Dropout(0.1, mode="eval")


@pytest.mark.parametrize("readout", [wn.Flatten(), wn.GlobalAvgPool()], ids=["vec", "gap"])
def test_dropout_kernel_does_not_depend_on_tiles(readout):
    """Dropout scales only same-input entries: tiles off the diagonal must find them too."""
    net = wn.serial(wn.Conv(4, 3, w_std=1.3), wn.Relu(), wn.Dropout(0.3), readout, wn.Dense(1))
    x = images(n=7, spatial=(4,))
    ref = net.kernel(x, batch_size=7)
    for bs in (1, 2, (3, 2)):
        k = net.kernel(x, batch_size=bs)
        torch.testing.assert_close(k.nngp, ref.nngp, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(k.ntk, ref.ntk, rtol=1e-13, atol=1e-15)
    # and the diagonal really is raised by 1/(1 - 0.3) relative to the off-diagonal scale
    k_between = net.kernel(x[:3], x[3:])
    torch.testing.assert_close(k_between.nngp, ref.nngp[:3, 3:], rtol=1e-13, atol=1e-15)
