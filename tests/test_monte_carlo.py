"""Analytic kernels against Monte-Carlo averages over finite networks from ``build``.

Each test network ends in a Dense layer as wide as its hidden layers, so the empirical
kernels average over many output channels and their noise falls like 1/sqrt(width) (the
finite-width bias falls like 1/width). We check (a) at every width the estimate lies within
Z standard errors of the analytic kernel (entrywise, Z = 5), and (b) the standard error
falls as width grows 64 -> 512 (an 8x wider net should give about 2.8x less noise; we ask
1.6x), so that (a) bounds the error ever more tightly. The realised error of 24 samples is
itself too noisy to compare across two widths: its ratio ranged 1.1-6.5 over seeds 3-5
for ReLU, erf and sign, while the standard-error ratio ranged 2.0-3.3.
"""

import pytest
import torch

import widenets as wn

Z = 5.0
WIDTHS = (64, 512)
N_SAMPLES = 24

ACTIVATIONS = {
    "relu": wn.Relu(),
    "leaky_relu": wn.LeakyRelu(0.1),
    "abrelu": wn.ABRelu(-0.4, 1.2),
    "abs": wn.Abs(),
    "erf": wn.Erf(),
    "gelu": wn.Gelu(),
    "sin": wn.Sin(amplitude=1.0, frequency=1.3, phase=0.4),
    "gaussian": wn.Gaussian(a=1.0, b=-0.5),
    "sign": wn.Sign(),
    "identity": wn.Identity(),
    "monomial2": wn.Monomial(2),
    "monomial3": wn.Monomial(3),
    "tanh": wn.Elementwise(torch.tanh),
    "Mish": wn.Mish(),
}
#: the other smooth activations (layers/smooth.py) share Mish's quadrature code path: slow
SLOW_ACTIVATIONS = {
    "Tanh": wn.Tanh(),
    "Sigmoid": wn.Sigmoid(),
    "Silu": wn.Silu(),
    "Swish": wn.Swish(beta=1.7),
    "Softplus": wn.Softplus(beta=0.8),
}


def _net(act, width, parameterization="ntk"):
    return wn.serial(
        wn.Dense(width, w_std=1.2, b_std=0.1, parameterization=parameterization),
        act,
        wn.Dense(width, w_std=1.1, b_std=0.2, parameterization=parameterization),
    )


def _errors(act, x, parameterization="ntk"):
    out = {}
    for width in WIDTHS:
        net = _net(act, width, parameterization)
        k = net.kernel(x)
        mc = wn.empirical.monte_carlo(net, x, n_samples=N_SAMPLES, seed=3)
        for name in ("nngp", "ntk"):
            exact, est, se = getattr(k, name), getattr(mc, name), getattr(mc, name + "_se")
            z = ((est - exact).abs() / se.clamp_min(1e-12)).max().item()
            out[(name, width)] = (z, (se.mean() / exact.abs().mean()).item())
    return out


@pytest.fixture
def small_inputs(inputs):
    x = inputs[:4]
    return x / x.pow(2).mean(1, keepdim=True).sqrt()


@pytest.mark.parametrize(
    "name",
    list(ACTIVATIONS) + [pytest.param(n, marks=pytest.mark.slow) for n in SLOW_ACTIVATIONS],
)
def test_monte_carlo_converges_to_kernel(name, small_inputs):
    errs = _errors({**ACTIVATIONS, **SLOW_ACTIVATIONS}[name], small_inputs)
    for kernel in ("nngp", "ntk"):
        if name == "sign" and kernel == "ntk":
            pass  # the NTK through sign is the readout's NNGP: still checked below
        for width in WIDTHS:
            z, rel = errs[(kernel, width)]
            assert z < Z, f"{kernel} at width {width}: {z:.2f} standard errors off"
        small, large = errs[(kernel, WIDTHS[0])][1], errs[(kernel, WIDTHS[-1])][1]
        assert large < small / 1.6, f"{kernel}: standard error {small:.4f} -> {large:.4f}"


def test_standard_parameterisation_converges(small_inputs):
    """Standard parameterisation: the NTK depends on the finite widths and still matches."""
    errs = _errors(wn.Relu(), small_inputs, "standard")
    for kernel in ("nngp", "ntk"):
        for width in WIDTHS:
            assert errs[(kernel, width)][0] < Z
        assert errs[(kernel, WIDTHS[-1])][1] < errs[(kernel, WIDTHS[0])][1] / 1.6


def test_residual_and_concat_networks_converge(small_inputs):
    """Branching combinators: a residual block and a channel concatenation (deeper, so the
    finite-width bias is checked from width 256)."""
    for width in (256, 512):
        net = wn.serial(
            wn.Dense(width, w_std=1.2, b_std=0.1),
            wn.residual(wn.Relu(), wn.Dense(width, w_std=1.0, b_std=0.1)),
            wn.fan_out(2),
            wn.parallel(wn.Dense(width // 2), wn.serial(wn.Erf(), wn.Dense(width, b_std=0.3))),
            wn.fan_in_concat(),
            wn.Relu(),
            wn.Dense(width, w_std=1.1),
        )
        k = net.kernel(small_inputs)
        mc = wn.empirical.monte_carlo(net, small_inputs, n_samples=N_SAMPLES, seed=5)
        for name in ("nngp", "ntk"):
            z = ((getattr(mc, name) - getattr(k, name)).abs() / getattr(mc, name + "_se")).max()
            assert z < Z, (width, name, z)


def test_monte_carlo_between_two_sets_and_width_override(small_inputs, inputs):
    net = wn.serial(wn.Dense(3, w_std=1.3), wn.Relu(), wn.Dense(2, w_std=1.0))
    wide = net.with_widths(512, keep_readout=False)
    assert wide.layers[0].out_dim == 512 and wide.layers[2].out_dim == 512
    assert net.with_widths(512).layers[2].out_dim == 2  # the readout keeps its width
    x2 = inputs[4:]
    k = wide.kernel(small_inputs, x2)
    mc = wn.empirical.monte_carlo(net, small_inputs, x2, n_samples=N_SAMPLES, width=512, seed=1)
    assert mc.nngp.shape == (4, 3) and mc.ntk.shape == (4, 3)
    # width=512 keeps the 2-channel readout: the noise is larger, the check is the same
    mc_w = wn.empirical.monte_carlo(wide, small_inputs, x2, n_samples=N_SAMPLES, seed=1)
    for est, exact, se in ((mc_w.nngp, k.nngp, mc_w.nngp_se), (mc_w.ntk, k.ntk, mc_w.ntk_se)):
        assert ((est - exact).abs() / se).max() < Z
