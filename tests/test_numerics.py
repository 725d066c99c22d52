"""Numerics of kernel evaluation: reduced precision, overflow, NaN (``widenets.numerics``).

Every case states what is expected: a value checked against an independent computation
(the float64 kernel rounded to the dtype, a kernel at another input scale times the exact
power of the scale, a Gaussian expectation by quadrature in 30-digit arithmetic), or an
error or warning whose message is matched.
"""

import math
import warnings

import pytest
import torch

import widenets as wn
import widenets.compute as compute
from widenets.errors import NonFiniteKernelError, ReducedPrecisionWarning
from widenets.predict import ensemble_from_kernels, gp_inference, gradient_descent_mse

EPS32 = torch.finfo(torch.float32).eps
#: near-duplicate pairs: the second input at these angles (radians) from the first
ANGLES = (1e-2, 1e-3, 1e-4, 1e-5)


def near_duplicates(angles=ANGLES, shape=(16,), n_random=6, seed=0, dtype=torch.float32):
    """Pairs of inputs at the given angles (norms 1 to 1.3 times sqrt(d)) and a few random
    inputs, in float64 but exactly representable in ``dtype`` (so that the float64 and the
    reduced-precision kernels see the same inputs)."""
    g = torch.Generator().manual_seed(seed)
    d = math.prod(shape)
    rows = []
    for theta in angles:
        u = torch.randn(d, generator=g, dtype=torch.float64)
        u /= u.norm()
        w = torch.randn(d, generator=g, dtype=torch.float64)
        w -= (w @ u) * u
        w /= w.norm()
        r = 1 + 0.3 * torch.rand((), generator=g, dtype=torch.float64)
        rows += [u * r, (math.cos(theta) * u + math.sin(theta) * w) * r]
    rows += list(torch.randn(n_random, d, generator=g, dtype=torch.float64) / math.sqrt(d))
    x = torch.stack(rows) * math.sqrt(d)
    return x.to(dtype).to(torch.float64).reshape(-1, *shape)


def fc(act, depth=2, b_std=0.1):
    layers = []
    for _ in range(depth):
        layers += [wn.Dense(512, w_std=1.5, b_std=b_std), act]
    return wn.serial(*layers, wn.Dense(1, w_std=1.5, b_std=b_std))


def cnn(readout, act=None, b_std=0.1, w_std=1.4):
    act = act or wn.Relu()
    return wn.serial(
        wn.Conv(8, 3, w_std=w_std, b_std=b_std),
        act,
        wn.Conv(8, 3, w_std=w_std, b_std=b_std),
        act,
        readout,
        wn.Dense(1, w_std=w_std, b_std=b_std),
    )


def ulps_from_rounded(k64, k, dtype, fields=("nngp", "ntk")):
    """max |k - round(k64)| over every field, in units of eps(dtype) times the largest
    diagonal entry of the float64 kernel."""
    scale = max(float(getattr(k64, f).abs().max()) for f in fields)
    eps = torch.finfo(dtype).eps
    return max(
        float((getattr(k64, f).to(dtype).double() - getattr(k, f).double()).abs().max())
        / (eps * scale)
        for f in fields
    )


# ----- reduced precision ---------------------------------------------------------------------

ACTIVATIONS = {
    "relu": wn.Relu,
    "erf": wn.Erf,
    "gelu": wn.Gelu,
    "leaky_relu": lambda: wn.LeakyRelu(0.1),
    "abs": wn.Abs,
}


@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_float32_fc_on_near_duplicates_is_the_float64_kernel_rounded(act):
    """Before: relative errors up to 8e3 float32 ulps on pairs 1e-3 rad apart (ReLU NTK),
    whatever the snapping rule; now within a few ulps, for a set with itself and for two
    sets (the tiled path's other branch)."""
    net = fc(ACTIVATIONS[act]())
    x = near_duplicates()
    assert ulps_from_rounded(net.kernel(x), net.kernel(x, dtype=torch.float32), torch.float32) < 8
    a, b = x[0::2], x[1::2]  # each near-duplicate pair across the two sets
    k64, k32 = net.kernel(a, b), net.kernel(a, b, dtype=torch.float32)
    assert ulps_from_rounded(k64, k32, torch.float32) < 8
    assert k32.ntk.dtype == torch.float32


@pytest.mark.parametrize("readout", ["flatten", "gap"])
@pytest.mark.parametrize("act", ["relu", "abs"])
def test_float32_cnn_on_near_duplicates_is_the_float64_kernel_rounded(readout, act):
    """Flatten: the packed path (and tiles of two sets); global average pooling: the full
    pixel-pair layout, whose flagged pairs are recomputed as a block."""
    net = cnn(wn.Flatten() if readout == "flatten" else wn.GlobalAvgPool(), ACTIVATIONS[act]())
    x = near_duplicates(shape=(3, 6, 6), n_random=3)
    for args in ((x,), (x[0::2], x[1::2])):
        k64, k32 = net.kernel(*args), net.kernel(*args, dtype=torch.float32)
        assert ulps_from_rounded(k64, k32, torch.float32) < 8


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_on_near_duplicates(dtype):
    """In float16 (bfloat16) a 64-ulp snap of the correlation merged angles below 0.35 rad
    (1 rad); a half-precision input resolves angles down to about 1e-3."""
    net = fc(wn.Relu(), depth=2)
    x = near_duplicates(angles=(0.3, 0.1, 0.03, 0.01), dtype=dtype)
    assert ulps_from_rounded(net.kernel(x), net.kernel(x, dtype=dtype), dtype) < 4


def test_float32_ntk_smallest_eigenvalue_on_near_duplicates():
    """Before: 3.9e-7 against 1.5e-3 (float64). Now as close to float64's as the rounding
    of the entries allows (Weyl: |lam32 - lam64| <= ||K32 - K64||_F)."""
    net = fc(wn.Relu())
    x = near_duplicates(angles=(3e-3, 1e-2, 3e-3, 1e-2), n_random=12)
    k64 = net.kernel(x, get="ntk").ntk
    k32 = net.kernel(x, dtype=torch.float32, get="ntk").ntk.double()
    lam64, lam32 = torch.linalg.eigvalsh(k64)[0], torch.linalg.eigvalsh(k32)[0]
    assert abs(lam32 - lam64) <= torch.linalg.norm(k32 - k64)
    assert abs(lam32 - lam64) < 0.02 * lam64


def test_duplicate_inputs_in_float32_are_the_float64_entries_rounded():
    """Two rows holding the same input: flagged, recomputed in float64 (where their
    correlation rounds to 1, as for an input with itself), then rounded."""
    x = near_duplicates(angles=(1e-3,), n_random=4)
    x = torch.cat([x, x[:1]])  # row 6 repeats row 0
    k64, k32 = fc(wn.Relu()).kernel(x), fc(wn.Relu()).kernel(x, dtype=torch.float32)
    assert k64.ntk[0, 6] == k64.ntk[0, 0]
    assert k32.ntk[0, 6] == k64.ntk[0, 6].float() and k32.nngp[6, 0] == k64.nngp[6, 0].float()


def test_only_flagged_pairs_are_recomputed(monkeypatch):
    """Well-separated inputs stay on the fast path; each near-duplicate pair is recomputed
    in float64 once; float64 kernels are never watched."""
    calls = []
    original = compute.recompute_pairs

    def counting(layer, prep, gi, gj, *args):
        calls.append(len(gi))
        return original(layer, prep, gi, gj, *args)

    monkeypatch.setattr(compute, "recompute_pairs", counting)
    net = fc(wn.Relu())
    g = torch.Generator().manual_seed(1)
    net.kernel(torch.randn(40, 16, generator=g), dtype=torch.float32)
    assert calls == []
    x = near_duplicates()
    net.kernel(x)
    assert calls == []
    net.kernel(x, dtype=torch.float32, batch_size=(3, 5))
    assert sum(calls) == len(ANGLES)


# ----- warnings of the predictors -------------------------------------------------------------


def _warning_data(theta, seed=3):
    """Twelve random inputs, one near-duplicate of the first at ``theta``, five tests."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 16, generator=g, dtype=torch.float64)
    u = x[0] / x[0].norm()
    w = torch.randn(16, generator=g, dtype=torch.float64)
    w -= (w @ u) * u
    w /= w.norm()
    near = (math.cos(theta) * u + math.sin(theta) * w) * x[0].norm()
    x = torch.cat([x, near[None]])
    return x, torch.randn(5, 16, generator=g, dtype=torch.float64), torch.randn(13, generator=g)


def _predictions(k, kt, y, diag_reg=0.0):
    """gp_inference on the NNGP, gradient flow (t = inf and a large t) and the ensemble on
    the NTK, each with its test kernel."""
    return {
        "gp": lambda: gp_inference(k.nngp, y, kt.nngp, diag_reg=diag_reg)[0],
        "gd inf": lambda: gradient_descent_mse(k.ntk, y, diag_reg=diag_reg)(None, kt.ntk),
        "gd 1e9": lambda: gradient_descent_mse(k.ntk, y, diag_reg=diag_reg)(1e9, kt.ntk),
        "ensemble": lambda: ensemble_from_kernels(k, kt, None, y, get="ntk", diag_reg=diag_reg)[0],
    }


@pytest.mark.parametrize("which", ["gp", "gd inf", "gd 1e9", "ensemble"])
def test_ill_conditioned_float32_kernel_warns_with_the_remedy(which):
    """A float32 kernel with near-duplicates (NNGP at 1e-3 rad, NTK at 1e-5 rad): the
    estimated condition number times eps(float32) is above 1e-2. The warning says so and
    suggests a diag_reg; with it the warning is gone and the prediction is within 1% of
    float64's (without it, at 1e-2 and more)."""
    x, xt, y = _warning_data(1e-3 if which == "gp" else 1e-5)
    net = fc(wn.Relu())
    k, kt = net.kernel(x, dtype=torch.float32), net.kernel(xt, x, dtype=torch.float32)
    with pytest.warns(ReducedPrecisionWarning, match=r"float32.*condition number") as record:
        _predictions(k, kt, y)[which]()
    message = str(record[0].message)
    assert record[0].filename == __file__  # points at the caller
    assert "dtype=torch.float64" in message
    suggested = float(message.split("diag_reg >= ")[1].split(" ")[0])
    k64, kt64 = net.kernel(x), net.kernel(xt, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReducedPrecisionWarning)
        fixed = _predictions(k, kt, y, suggested)[which]()
    exact = _predictions(k64, kt64, y, suggested)[which]()
    assert (fixed.double() - exact).norm() < 1e-2 * exact.norm()


def test_no_warning_when_well_conditioned_or_float64():
    net = fc(wn.Relu())
    x, xt, y = _warning_data(1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReducedPrecisionWarning)
        for run in _predictions(net.kernel(x), net.kernel(xt, x), y).values():
            run()  # ill-conditioned, but float64
        x, xt, y = _warning_data(0.3)
        k, kt = net.kernel(x, dtype=torch.float32), net.kernel(xt, x, dtype=torch.float32)
        for run in _predictions(k, kt, y).values():
            run()  # float32, well-conditioned
        x, xt, y = _warning_data(1e-5)
        k, kt = net.kernel(x, dtype=torch.float32), net.kernel(xt, x, dtype=torch.float32)
        gradient_descent_mse(k.ntk, y)(1.0, kt.ntk)  # a short time: bounded amplification
        gradient_descent_mse(k.ntk, y)(None)  # the training points: no solve


def test_indefinite_float32_kernel_error_says_why():
    x, xt, y = _warning_data(1e-5)
    net = fc(wn.Relu())
    k, kt = net.kernel(x, dtype=torch.float32), net.kernel(xt, x, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"not positive definite.*float32.*float64"):
        gp_inference(k.nngp, y, kt.nngp)


# ----- NaN, inf and overflow -----------------------------------------------------------------


def test_nan_or_inf_inputs_are_rejected_naming_the_row():
    x = torch.randn(5, 3)
    x[3, 2] = math.nan
    with pytest.raises(ValueError, match=r"`x1` contains NaN or inf \(NaN\): row 3 "):
        fc(wn.Relu()).kernel(x)
    x[3, 2] = -math.inf
    with pytest.raises(ValueError, match=r"`x2` contains NaN or inf \(inf\): row 3 "):
        fc(wn.Relu()).kernel(torch.randn(2, 3), x)
    with pytest.raises(ValueError, match=r"`x1` has values beyond the range of torch\.float16"):
        wn.errors.as_tensor(torch.full((2, 3), 1e5), "x1", torch.float16)


def test_gpytorch_kernel_rejects_a_nan_input():
    pytest.importorskip("gpytorch")
    from widenets.gpytorch import NetworkKernel

    kern = NetworkKernel(fc(wn.Relu(), depth=1)).double()
    x = torch.randn(6, 3, dtype=torch.float64)
    x[4, 1] = math.nan
    with pytest.raises(ValueError, match=r"`x1` contains NaN or inf \(NaN\): row 4 "):
        kern(x).to_dense()
    x[4, 1] = 1e200  # finite, but its Gram overflows
    with pytest.raises(NonFiniteKernelError, match=r"input kernel.*x1\[0\] and x1\[4\]"):
        kern(x).to_dense()


def _huge_inputs():
    """Six inputs of 10,000 features of size about 2e152: the running sums of x.x reach
    4e308 and overflow float64, while x.x / d (4e304) and the kernels fit."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 10_000, generator=g, dtype=torch.float64)


def test_homogeneous_network_on_huge_inputs_is_rescaled_exactly():
    """A bias-free ReLU network: K(s x) = s^2 K(x). Before, the input Gram overflowed (NaN
    kernel); now the kernel is computed at a power-of-two scale and scaled back exactly.
    At 1e155 the kernel itself (1e310) is not a float64: a clear error."""
    x = _huge_inputs()
    net = fc(wn.Relu(), b_std=None)
    assert net.scaling_degree(1) == 1
    base, big = net.kernel(x), net.kernel(x * 2e152)
    for f in ("nngp", "ntk"):
        torch.testing.assert_close(getattr(big, f), getattr(base, f) * 4e304, rtol=1e-14, atol=0)
    with pytest.raises(
        NonFiniteKernelError,
        match=r"exceed the range of torch\.float64.*"
        r"homogeneous of degree 1.*largest \|x\| is \d\.\d+e\+155",
    ):
        net.kernel(x * 1e155)


def test_input_gram_overflow_of_a_network_with_biases():
    """With biases the kernel does not scale, but the input Gram is rescaled exactly: at
    2e152 the running sums of x.x overflowed (NaN kernel before); x.x / d = 4e304 does
    not, and b^2 is negligible: K(s x) = s^2 K_bias-free(x). At 1e155, x.x / d itself is
    beyond float64: an error with the inputs' norm and the advice to rescale them."""
    x = _huge_inputs()
    k = fc(wn.Relu()).kernel(x * 2e152)
    ref = fc(wn.Relu(), b_std=None).kernel(x)
    torch.testing.assert_close(k.ntk, ref.ntk * 4e304, rtol=1e-13, atol=0)
    with pytest.raises(
        ValueError,
        match=r"input kernel x\.x / C of `x1` overflows torch\.float64"
        r".*about \d\.\d+e\+310.*largest \|x\| = \d\.\d+e\+155.*Rescale the inputs",
    ):
        fc(wn.Relu()).kernel(x * 1e155)


def test_float16_kernels_of_raw_pixels():
    """Raw 0-255 pixels in float16 (largest 65504): x.x summed over channels overflows.
    Bias-free network: rescaled by a power of two, the kernel is the float64 one rounded
    to float16. With biases (and w_std = 2) a layer overflows: the error names it."""
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (5, 3, 8, 8), generator=g).to(torch.uint8)
    net = cnn(wn.Flatten(), b_std=None, w_std=1.0)
    k16 = net.kernel(pixels, dtype=torch.float16)
    assert ulps_from_rounded(net.kernel(pixels), k16, torch.float16) < 4
    with pytest.raises(
        NonFiniteKernelError,
        match=r"overflow in layer \d \(Conv.*torch\.float16"
        r".*divide raw pixels by 255.*float32",
    ):
        cnn(wn.Flatten(), w_std=2.0).kernel(pixels, dtype=torch.float16)


def _gauss_expectation(f, m, q1, k, q2):
    """E[f(u) m(u)] over u ~ N(0, q1), where m(u) = E[g(v) | u] is given in closed form
    as m(u, mu, var) with v | u ~ N(k u / q1, q2 - k^2 / q1): a 1-D integral in 30-digit
    arithmetic, split where the integrand turns (|u| ~ 1, i.e. z ~ 1 / sqrt(q1))."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 30
    q1, k, q2 = mp.mpf(q1), mp.mpf(k), mp.mpf(q2)
    var = q2 - k * k / q1
    s = mp.sqrt(q1)

    def integrand(z):
        u = s * z
        return mp.npdf(z) * f(mp, u) * m(mp, u, k / q1 * u, var)

    w = 10 / s
    return float(mp.quad(integrand, [-mp.inf, -1, -w, 0, w, 1, mp.inf]))


def _gelu(mp, u):
    return u * mp.ncdf(u)


def _gelu_prime(mp, u):
    return mp.ncdf(u) + u * mp.npdf(u)


def _gelu_given(mp, u, mu, var):  # E[v Phi(v)], v ~ N(mu, var)
    s = mp.sqrt(1 + var)
    return mu * mp.ncdf(mu / s) + var * mp.npdf(mu / s) / s


def _gelu_prime_given(mp, u, mu, var):  # E[Phi(v) + v phi(v)]
    s = mp.sqrt(1 + var)
    return mp.ncdf(mu / s) + mu * mp.npdf(mu / s) / s**3


def _erf(mp, u):
    return mp.erf(u)


def _erf_prime(mp, u):
    return 2 / mp.sqrt(mp.pi) * mp.exp(-u * u)


def _erf_given(mp, u, mu, var):  # E[erf(v)]
    return mp.erf(mu / mp.sqrt(1 + 2 * var))


def _erf_prime_given(mp, u, mu, var):  # E[erf'(v)]
    return 2 / mp.sqrt(mp.pi) * mp.exp(-mu * mu / (1 + 2 * var)) / mp.sqrt(1 + 2 * var)


@pytest.mark.parametrize(
    "act, maps",
    [
        (wn.Gelu, (_gelu, _gelu_given, _gelu_prime, _gelu_prime_given)),
        (wn.Erf, (_erf, _erf_given, _erf_prime, _erf_prime_given)),
    ],
    ids=["gelu", "erf"],
)
def test_gelu_and_erf_at_inputs_of_size_1e9(act, maps):
    """Before: Gelu's NNGP and NTK were inf on the diagonal ((1 + q1)(1 + q2) - K^2
    cancelled to 0 at q = 1e18), Erf's NTK too (1 - r^2 did). Now finite and equal to the
    Gaussian expectations computed by quadrature: NNGP = E[phi(u) phi(v)], NTK = NNGP +
    K E[phi'(u) phi'(v)] for Dense, phi, Dense (unit weights, no biases)."""
    f, m, fp, mp_ = maps
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, generator=g, dtype=torch.float64) * 1e9
    k = wn.serial(wn.Dense(8, w_std=1.0), act(), wn.Dense(1, w_std=1.0)).kernel(x)
    gram = x @ x.T / x.shape[1]
    assert torch.isfinite(k.nngp).all() and torch.isfinite(k.ntk).all()
    for i, j in ((0, 0), (1, 1), (0, 1), (1, 2)):
        q1, kk, q2 = float(gram[i, i]), float(gram[i, j]), float(gram[j, j])
        nngp = _gauss_expectation(f, m, q1, kk, q2)
        dot = _gauss_expectation(fp, mp_, q1, kk, q2)
        assert float(k.nngp[i, j]) == pytest.approx(nngp, rel=1e-10)
        assert float(k.ntk[i, j]) == pytest.approx(nngp + kk * dot, rel=1e-10)


def test_activation_undefined_on_negative_inputs():
    """Elementwise(torch.log): the quadrature meets log of negative numbers, every entry
    NaN. The error names the layer, says NaN from finite inputs, and why."""
    net = wn.serial(wn.Dense(8), wn.Elementwise(torch.log, degree=8), wn.Dense(1))
    with pytest.raises(
        NonFiniteKernelError,
        match=r"invalid operation in layer 1 "
        r"\(Elementwise\(log.*not defined for negative inputs",
    ) as err:
        net.kernel(torch.randn(4, 3))
    assert "\n" not in str(err.value)


def test_overflow_inside_a_network_names_the_layer_and_dtype():
    """A degree-20 monomial of pre-activations of variance ~1e4 in float32: E[u^40] ~ 1e98
    overflows there (not in float64, which is the advice)."""
    net = wn.serial(wn.Dense(8, b_std=1.0), wn.Monomial(20), wn.Dense(1))
    x = torch.full((3, 4), 100.0) + torch.arange(12.0).reshape(3, 4)
    with pytest.raises(
        NonFiniteKernelError,
        match=r"overflow in layer 1 \(Monomial\(20\)\).*"
        r"largest torch\.float32.*float64",
    ):
        net.kernel(x, dtype=torch.float32)
    assert torch.isfinite(net.kernel(x).ntk).all()


def test_scaling_degrees():
    relu = fc(wn.Relu(), b_std=None)
    assert relu.scaling_degree(1) == 1
    assert fc(wn.Relu()).scaling_degree(1) is None  # biases
    assert fc(wn.Erf(), b_std=None).scaling_degree(1) is None
    assert wn.serial(wn.Dense(4), wn.Monomial(3), wn.Dense(1)).scaling_degree(1) == 3
    assert wn.serial(wn.Dense(4), wn.Sign(), wn.Dense(1, b_std=0.5)).scaling_degree(1) == 0
    block = wn.residual(wn.Dense(4), wn.Relu(), wn.Dense(4))
    assert wn.serial(wn.Dense(4), block, wn.Dense(1)).scaling_degree(1) == 1
    normed = wn.serial(wn.Dense(4), wn.LayerNorm(eps=0.0), wn.Erf(), wn.Dense(1, b_std=1.0))
    assert normed.scaling_degree(1) == 0
    assert wn.serial(wn.Dense(4), wn.LayerNorm(), wn.Dense(1)).scaling_degree(1) is None
    std = wn.Dense(4, b_std=0.0, parameterization="standard")  # its NTK adds 1 for the bias
    assert std.scaling_degree(1) is None and wn.Dense(4, b_std=0.0).scaling_degree(1) == 1
