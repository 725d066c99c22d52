"""Student-t process (inverse-gamma scale mixture of the NNGP).

Checked against (a) direct conditioning of the joint multivariate t by scipy's
``multivariate_t`` (log-density of the conditional = joint minus marginal), (b) the Gaussian
posterior as alpha -> inf with beta / alpha fixed, and (c) finite networks built with the
inverse-gamma prior: their prior variance, and their posterior predictive mean and variance
estimated by self-normalised importance sampling, within Z = 4 standard errors.
"""

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_t

import widenets as wn
from widenets.predict import student_t_inference

Z = 4.0


def _net(width=256):
    return wn.serial(
        wn.Dense(width, w_std=1.3, b_std=0.2), wn.Relu(), wn.Dense(1, w_std=1.0, b_std=0.1)
    )


@pytest.fixture
def problem(inputs):
    x_train, x_test = inputs[:4], inputs[4:7]
    net = _net()
    k_all = net.kernel(torch.cat([x_train, x_test]), get="nngp").nngp
    g = torch.Generator().manual_seed(0)
    y = torch.randn(4, generator=g, dtype=torch.float64)
    return k_all[:4, :4], y, k_all[4:, :4], k_all[4:, 4:]


@pytest.mark.parametrize("alpha,beta,reg", [(1.5, 0.7, 0.1), (4.0, 3.0, 0.01), (0.6, 2.0, 0.3)])
def test_matches_direct_conditioning_of_multivariate_t(problem, alpha, beta, reg):
    k_dd, y, k_td, k_tt = problem
    post = student_t_inference(k_dd, y, k_td, k_tt, alpha, beta, reg)
    k_reg = k_dd + reg * k_dd.diagonal().mean() * torch.eye(4, dtype=k_dd.dtype)
    joint = torch.cat([torch.cat([k_reg, k_td.T], 1), torch.cat([k_td, k_tt], 1)]).numpy()
    s = beta / alpha
    df = 2 * alpha
    marginal = multivariate_t(np.zeros(4), s * joint[:4, :4], df=df)
    joint_t = multivariate_t(np.zeros(7), s * joint, df=df)
    assert post.df == pytest.approx(2 * alpha + 4)
    assert post.log_marginal_likelihood == pytest.approx(marginal.logpdf(y.numpy()), rel=1e-10)
    cond = multivariate_t(post.mean.numpy(), post.scale.numpy(), df=post.df)
    rng = np.random.default_rng(1)
    for _ in range(5):
        f = post.mean.numpy() + rng.normal(size=3) * np.sqrt(np.diag(post.scale.numpy()))
        direct = joint_t.logpdf(np.concatenate([y.numpy(), f])) - marginal.logpdf(y.numpy())
        assert cond.logpdf(f) == pytest.approx(direct, rel=1e-9, abs=1e-9)


def test_several_outputs_share_the_variance(problem):
    k_dd, y, k_td, k_tt = problem
    y2 = torch.stack([y, -0.5 * y + 0.3], 1)
    post = student_t_inference(k_dd, y2, k_td, k_tt, 2.0, 1.5, 0.05)
    k_reg = k_dd + 0.05 * k_dd.diagonal().mean() * torch.eye(4, dtype=k_dd.dtype)
    big = torch.block_diag(k_reg, k_reg).numpy() * (1.5 / 2.0)
    lml = multivariate_t(np.zeros(8), big, df=4.0).logpdf(y2.T.reshape(-1).numpy())
    assert post.log_marginal_likelihood == pytest.approx(lml, rel=1e-10)
    assert post.df == pytest.approx(4.0 + 8)
    assert post.mean.shape == (3, 2)


def test_tends_to_gaussian_posterior_as_alpha_grows(problem):
    k_dd, y, k_td, k_tt = problem
    s = 0.7
    mean_gp, cov_gp = wn.predict.gp_inference(s * k_dd, y, s * k_td, s * k_tt, diag_reg=0.1)
    gaps = []
    for alpha in (1e1, 1e3, 1e5, 1e7):
        post = student_t_inference(k_dd, y, k_td, k_tt, alpha, s * alpha, 0.1)
        torch.testing.assert_close(post.mean, mean_gp, rtol=1e-10, atol=1e-12)
        gaps.append((post.covariance - cov_gp).abs().max().item())
    assert all(b < a / 50 for a, b in zip(gaps, gaps[1:], strict=False)), gaps
    assert gaps[-1] < 1e-4 * cov_gp.abs().max().item()  # the gap is O(1 / alpha)


def test_finite_networks_with_inverse_gamma_prior(inputs):
    """Prior variance E[sigma^2] K and the posterior predictive, by importance sampling."""
    alpha, beta, lam = 3.0, 2.0, 0.5  # noise variance sigma^2 * lam (absolute)
    x_train, x_test = inputs[:2], inputs[4:6]
    x = torch.cat([x_train, x_test])
    net = _net(256)
    k = net.kernel(x, get="nngp").nngp
    y = torch.tensor([0.8, -0.5], dtype=torch.float64)
    n_samples = 3000
    outs, variances = [], []
    for s in range(n_samples):
        model = net.build(
            (4,), seed=s, dtype=torch.float64, last_layer_variance_prior=(alpha, beta)
        )
        with torch.no_grad():
            outs.append(model(x)[:, 0])
        variances.append(model.variance)
    f = torch.stack(outs)  # (S, 4)
    var = torch.tensor(variances, dtype=torch.float64)
    # the prior: Var f = E[sigma^2] K = beta / (alpha - 1) K on the diagonal
    second = f**2
    est, se = second.mean(0), second.std(0) / math.sqrt(n_samples)
    expected = beta / (alpha - 1) * k.diagonal()
    assert ((est - expected).abs() / se).max() < Z
    # the posterior by self-normalised importance sampling with the Gaussian likelihood
    resid = ((f[:, :2] - y) ** 2).sum(1)
    logw = -resid / (2 * var * lam) - math.log(2 * math.pi * lam) - torch.log(var)
    w = torch.exp(logw - logw.max())
    w = w / w.sum()
    post = student_t_inference(
        k[:2, :2], y, k[2:, :2], k[2:, 2:], alpha, beta, lam, diag_reg_absolute_scale=True
    )
    ft = f[:, 2:]
    mean = (w[:, None] * ft).sum(0)
    mean_se = ((w[:, None] ** 2) * (ft - mean) ** 2).sum(0).sqrt()
    assert ((mean - post.mean).abs() / mean_se).max() < Z
    dev2 = (ft - mean) ** 2
    pvar = (w[:, None] * dev2).sum(0)
    pvar_se = ((w[:, None] ** 2) * (dev2 - pvar) ** 2).sum(0).sqrt()
    assert ((pvar - post.covariance.diagonal()).abs() / pvar_se).max() < Z


def test_bad_alpha_beta(problem):
    k_dd, y, k_td, k_tt = problem
    for a, b in ((0.0, 1.0), (-1.0, 1.0), (1.0, 0.0), (1.0, -2.0), (math.nan, 1.0)):
        name = "alpha" if not (a > 0) else "beta"
        with pytest.raises(ValueError, match=f"`{name}` must be a finite positive"):
            student_t_inference(k_dd, y, k_td, k_tt, a, b)
        with pytest.raises(ValueError, match=f"`{name}`"):
            _net(8).build((4,), seed=0, last_layer_variance_prior=(a, b))
    with pytest.raises(TypeError, match="last_layer_variance_prior"):
        _net(8).build((4,), seed=0, last_layer_variance_prior=3.0)


def test_build_with_prior_is_reproducible_and_backward_compatible(inputs):
    net = _net(16)
    x = inputs.float()
    a = net.build((4,), seed=3, last_layer_variance_prior=wn.priors.InverseGamma(2.0, 1.0))
    b = net.build((4,), seed=3, last_layer_variance_prior=(2.0, 1.0))
    plain = net.build((4,), seed=3)
    assert a.variance == b.variance > 0
    torch.testing.assert_close(a(x), plain(x) * math.sqrt(a.variance))
