"""A corpus of bad and unusual inputs across the API, as a newcomer would pass them.

Each case states what must happen: a one-line error of the given type whose message
matches (and names the argument, in backticks), or a result that is checked against an
independent computation. A case fails on a silent wrong result (a value that is not the
checked one, NaN or inf) as much as on an unhelpful error.
"""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
import torch

import widenets as wn
from widenets.sklearn import NNGPClassifier, NTKRegressor

G = torch.Generator().manual_seed(0)
X = torch.randn(6, 4, generator=G, dtype=torch.float64)
Y = torch.randn(6, 2, generator=G, dtype=torch.float64)
XT = torch.randn(3, 4, generator=G, dtype=torch.float64)
IMG = torch.randn(4, 2, 5, 5, generator=G, dtype=torch.float64)
LIN = torch.nn.Linear(4, 2).double()


def fc(b_std=0.1):
    return wn.serial(wn.Dense(8, w_std=1.5, b_std=b_std), wn.Relu(), wn.Dense(1, w_std=1.5))


def cnn():
    return wn.serial(wn.Conv(4, (3, 3), b_std=0.1), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1))


K = fc().kernel(X)
KT = fc().kernel(XT, X)


class Err:
    def __init__(self, exc, pattern, names_argument=True):
        self.exc, self.pattern, self.names_argument = exc, pattern, names_argument


class Val:
    """The call returns a value; ``check(value)`` is an independent check of it."""

    def __init__(self, check):
        self.check = check


def close(a, b, tol=1e-12):
    """Same shape, finite, and within ``tol`` of each other entrywise."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return a.shape == b.shape and bool(torch.isfinite(a).all()) and (a - b).abs().max() <= tol


def close_ref(a, ref):
    """Against the written-out kernel below, which takes arccos of a correlation rounded
    near 1 on the diagonal (an error of about sqrt(eps) = 1.5e-8 relative): 1e-7 relative,
    far below any silent wrong result."""
    return close(a, ref, 1e-7 * float(ref.abs().max()))


def relu_fc_ntk(x1, x2):
    """The NTK of fc() written out (arc-cosine kernel, Cho & Saul 2009): independent of
    widenets' layers."""
    w2, b2 = 1.5**2, 0.1**2
    k12 = w2 * (x1 @ x2.T) / x1.shape[1] + b2
    q1 = w2 * (x1 * x1).sum(1) / x1.shape[1] + b2
    q2 = w2 * (x2 * x2).sum(1) / x2.shape[1] + b2
    norm = torch.sqrt(q1[:, None] * q2[None, :])
    c = (k12 / norm).clamp(-1, 1)
    th = torch.arccos(c)
    e = norm * (torch.sin(th) + (math.pi - th) * c) / (2 * math.pi)
    ed = (math.pi - th) / (2 * math.pi)
    ntk1 = k12  # the input layer's NTK equals its NNGP
    nngp2 = w2 * e
    ntk2 = nngp2 + w2 * ntk1 * ed
    return ntk2


CASES: dict[str, tuple] = {}


def case(name, call, expect):
    assert name not in CASES, name
    CASES[name] = (call, expect)


# ---------------------------------------------------------------- layer constructors
for name, call, pattern in [
    ("Dense(0)", lambda: wn.Dense(0), r"`out_dim` must be a positive integer, got 0"),
    ("Dense('8')", lambda: wn.Dense("8"), r"`out_dim`.*'8'"),
    ("Dense(2.5)", lambda: wn.Dense(2.5), r"`out_dim`.*2\.5"),
    ("Dense(True)", lambda: wn.Dense(True), r"`out_dim`.*True"),
    ("Dense w_std -1", lambda: wn.Dense(4, w_std=-1), r"`w_std`.*-1"),
    ("Dense w_std nan", lambda: wn.Dense(4, w_std=math.nan), r"`w_std`.*nan"),
    ("Dense w_std inf", lambda: wn.Dense(4, w_std=math.inf), r"`w_std`.*inf"),
    ("Dense w_std vector", lambda: wn.Dense(4, w_std=torch.ones(2)), r"`w_std`"),
    ("Dense b_std 'a'", lambda: wn.Dense(4, b_std="a"), r"`b_std`.*'a'"),
    ("Dense parameterization", lambda: wn.Dense(4, parameterization="x"), r"`parameterization`"),
    ("Conv(0)", lambda: wn.Conv(0), r"`out_channels`.*0"),
    ("Conv kernel 0", lambda: wn.Conv(4, 0), r"`kernel_size`.*0"),
    ("Conv kernel (3,-1)", lambda: wn.Conv(4, (3, -1)), r"`kernel_size`.*-1"),
    ("Conv stride 0", lambda: wn.Conv(4, 3, stride=0), r"`stride`.*0"),
    ("Conv padding", lambda: wn.Conv(4, 3, padding="full"), r"`padding`.*'full'"),
    ("Conv mean field", lambda: wn.Conv(4, parameterization="mean_field"), r"`parameterization`"),
    ("Conv w_std -1", lambda: wn.Conv(4, w_std=-1.0), r"`w_std`.*-1"),
    ("LeakyRelu 'a'", lambda: wn.LeakyRelu("a"), r"`a`.*'a'"),
    ("ABRelu nan", lambda: wn.ABRelu(math.nan, 1.0), r"`a`.*nan"),
    ("Monomial -1", lambda: wn.Monomial(-1), r"`degree`.*-1"),
    ("Monomial 1.5", lambda: wn.Monomial(1.5), r"`degree`.*1\.5"),
    ("Elementwise degree 0", lambda: wn.Elementwise(torch.tanh, degree=0), r"`degree`.*0"),
    ("Dropout 1.0", lambda: wn.Dropout(1.0), r"`rate`.*1\.0"),
    ("Dropout -0.1", lambda: wn.Dropout(-0.1), r"`rate`.*-0\.1"),
    ("Dropout 'a'", lambda: wn.Dropout("a"), r"`rate`.*'a'"),
    ("LayerNorm over", lambda: wn.LayerNorm(over="x"), r"`over`.*'x'"),
    ("AvgPool 0", lambda: wn.AvgPool(0), r"`window`.*0"),
    ("serial()", lambda: wn.serial(), r"`serial` needs at least one layer"),
    ("fan_out(0)", lambda: wn.fan_out(0), r"`n`.*0"),
    ("parallel()", lambda: wn.parallel(), r"`parallel` needs at least one branch"),
    ("Scale nan", lambda: wn.Scale(math.nan), r"`factor`.*nan"),
    ("residual()", lambda: wn.residual(), r"`residual` needs at least one branch"),
    ("DEQ width", lambda: wn.DEQ(0, wn.Relu()), r"`width`.*0"),
]:
    case(name, call, Err(ValueError, pattern))
for name, call, pattern in [
    ("Elementwise(3)", lambda: wn.Elementwise(3), r"`fn` must be a callable"),
    ("serial(3)", lambda: wn.serial(3), r"`serial` arguments must be widenets layers"),
    ("serial(nn.Linear)", lambda: wn.serial(torch.nn.Linear(2, 2)), r"`serial`.*Linear"),
    ("DEQ torch.relu", lambda: wn.DEQ(8, torch.relu), r"`activation` must be a widenets"),
]:
    case(name, call, Err(TypeError, pattern))

# ---------------------------------------------------------------- kernel calls
for name, call, exc, pattern in [
    ("kernel bool", lambda: fc().kernel(torch.ones(3, 4, dtype=torch.bool)), TypeError, r"`x1`"),
    (
        "kernel complex",
        lambda: fc().kernel(torch.ones(3, 4, dtype=torch.complex64)),
        TypeError,
        r"`x1`",
    ),
    ("kernel str", lambda: fc().kernel("abc"), TypeError, r"`x1` must hold real numbers"),
    ("kernel 1-D", lambda: fc().kernel(X[0]), ValueError, r"`x1` must have at least 2"),
    ("kernel empty", lambda: fc().kernel(X[:0]), ValueError, r"`x1` is empty"),
    ("kernel None", lambda: fc().kernel(None), ValueError, r"`x1`.*None"),
    ("kernel x2 empty", lambda: fc().kernel(X, X[:0]), ValueError, r"`x2` is empty"),
    (
        "kernel x2 features",
        lambda: fc().kernel(X, XT[:, :3]),
        ValueError,
        r"`x1` and `x2`.*\(4\).*\(3\)",
    ),
    (
        "kernel nan x1",
        lambda: fc().kernel(torch.tensor([[math.nan, 1.0]])),
        ValueError,
        r"`x1`.*NaN",
    ),
    (
        "kernel inf x2",
        lambda: fc().kernel(X, torch.full((2, 4), math.inf)),
        ValueError,
        r"`x2`.*inf",
    ),
    (
        "kernel meta",
        lambda: fc().kernel(torch.empty(3, 4, device="meta")),
        ValueError,
        r"`x1` is on the meta",
    ),
    ("kernel get typo", lambda: fc().kernel(X, get="ntkk"), ValueError, r"`get`.*'ntkk'"),
    ("kernel get []", lambda: fc().kernel(X, get=[]), ValueError, r"`get`"),
    ("kernel get None", lambda: fc().kernel(X, get=None), ValueError, r"`get`.*None"),
    ("kernel get 3", lambda: fc().kernel(X, get=3), ValueError, r"`get`.*3"),
    ("kernel dtype int", lambda: fc().kernel(X, dtype=torch.int32), ValueError, r"`dtype`.*int32"),
    (
        "kernel dtype str",
        lambda: fc().kernel(X, dtype="float64"),
        ValueError,
        r"`dtype`.*'float64'",
    ),
    ("kernel batch 0", lambda: fc().kernel(X, batch_size=0), ValueError, r"`batch_size`.*0"),
    ("kernel batch -1", lambda: fc().kernel(X, batch_size=-1), ValueError, r"`batch_size`.*-1"),
    ("kernel batch 2.0", lambda: fc().kernel(X, batch_size=2.0), ValueError, r"`batch_size`.*2\.0"),
    (
        "kernel batch triple",
        lambda: fc().kernel(X, batch_size=(1, 2, 3)),
        ValueError,
        r"`batch_size`",
    ),
    (
        "kernel batch True",
        lambda: fc().kernel(X, batch_size=True),
        ValueError,
        r"`batch_size`.*True",
    ),
    (
        "kernel progress str",
        lambda: fc().kernel(X, progress="yes"),
        ValueError,
        r"`progress`.*'yes'",
    ),
    ("cnn on flat", lambda: cnn().kernel(X), ValueError, r"Conv.*2-D window"),
    ("cnn on 3-D", lambda: cnn().kernel(IMG[:, 0]), ValueError, r"Conv.*2-D window"),
    (
        "conv bigger than image",
        lambda: wn.serial(wn.Conv(4, (7, 7), padding="valid"), wn.Relu()).kernel(IMG),
        ValueError,
        r"kernel of size 7 does not fit",
    ),
    (
        "fan_in_sum without fan_out",
        lambda: wn.serial(wn.Dense(3), wn.fan_in_sum()).kernel(X),
        ValueError,
        r"fan_in_sum needs a list of branches",
    ),
    (
        "parallel without fan_out",
        lambda: wn.serial(wn.parallel(wn.Dense(3), wn.Dense(3))).kernel(X),
        ValueError,
        r"put fan_out\(2\) before it",
    ),
    (
        "fan_in_concat mismatched",
        lambda: wn.serial(
            wn.fan_out(2), wn.parallel(wn.Conv(2, 3), wn.Conv(2, 3, stride=2)), wn.fan_in_concat()
        ).kernel(IMG),
        ValueError,
        r"fan_in_concat needs branches that differ only in channels",
    ),
]:
    case(name, call, Err(exc, pattern, names_argument=False))

# value cases of the kernel: checked against the arc-cosine NTK written out
case(
    "kernel list of lists",
    lambda: fc().kernel(X.tolist()).ntk,
    Val(lambda k: close_ref(k, relu_fc_ntk(X, X))),
)
case(
    "kernel numpy float32",
    lambda: fc().kernel(X.numpy().astype(np.float32)).ntk,
    Val(
        lambda k: (
            k.dtype == torch.float64
            and close_ref(k, relu_fc_ntk(X.float().double(), X.float().double()))
        )
    ),
)
case(
    "kernel int inputs",
    lambda: fc().kernel(torch.arange(12).reshape(3, 4)).ntk,
    Val(
        lambda k: close_ref(
            k, relu_fc_ntk(*(2 * [torch.arange(12.0, dtype=torch.float64).reshape(3, 4)]))
        )
    ),
)
case(
    "kernel x2 given equal",
    lambda: fc().kernel(X, X.clone()).ntk,
    Val(lambda k: close(k, K.ntk, 0)),
)
case("kernel x2 numpy", lambda: fc().kernel(X, X.numpy()).ntk, Val(lambda k: close(k, K.ntk, 0)))
case(
    "kernel one example",
    lambda: fc().kernel(X[:1]).ntk,
    Val(lambda k: close_ref(k, relu_fc_ntk(X[:1], X[:1]))),
)
case(
    "kernel batch_size list",
    lambda: fc().kernel(X, batch_size=[2, 3]).ntk,
    Val(lambda k: close(k, K.ntk, 1e-13)),
)
case("kernel get=('ntk',)", lambda: fc().kernel(X, get=("ntk",)).nngp, Val(lambda v: v is None))
case(
    "fc on images flattens nothing",
    lambda: fc().kernel(IMG).ntk.shape,
    Val(lambda s: tuple(s) == (4, 4, 5, 5)),
)
case(
    "zero inputs, ReLU without bias",
    lambda: wn.serial(wn.Dense(4), wn.Relu(), wn.Dense(1)).kernel(torch.zeros(3, 4)).nngp,
    Val(lambda k: close(k, torch.zeros(3, 3))),
)
case(
    "duplicate inputs give equal rows",
    lambda: fc().kernel(torch.cat([X[:2], X[:2]])).ntk,
    Val(
        lambda k: (
            close(k[:2], k[2:], 1e-13)
            and close_ref(k, relu_fc_ntk(torch.cat([X[:2], X[:2]]), torch.cat([X[:2], X[:2]])))
        )
    ),
)

# overflow, cancellation and invalid activations: a clear error, or the right value
FCNB = wn.serial(wn.Dense(8, w_std=1.5), wn.Relu(), wn.Dense(1, w_std=1.5))  # homogeneous
for name, call, pattern in [
    (
        "Elementwise(log)",
        lambda: wn.serial(wn.Dense(4), wn.Elementwise(torch.log), wn.Dense(1)).kernel(X),
        r"layer 1 \(Elementwise\(log.*not defined for negative inputs",
    ),
    (
        "ReLU with bias on 1e155 inputs",
        lambda: fc().kernel(X * 1e155),
        r"`x1` overflows torch.float64.*Rescale the inputs",
    ),
    ("homogeneous ReLU on 1e155 inputs", lambda: FCNB.kernel(X * 1e155), r"exceed the range"),
    (
        "float16 raw pixels",
        lambda: fc().kernel(torch.rand(4, 784, generator=G) * 255, dtype=torch.float16),
        r"overflow in layer 2.*float16.*divide raw pixels by 255",
    ),
    ("float32 of 1e200 inputs", lambda: fc().kernel(X * 1e200, dtype=torch.float32), r"`x1`"),
]:
    case(name, call, Err(ValueError, pattern, names_argument=False))
case(
    "homogeneous ReLU on 1e100 inputs: rescaled exactly",
    lambda: FCNB.kernel(X * 1e100).ntk / 1e200,
    Val(lambda k: close(k, FCNB.kernel(X).ntk, 1e-13 * float(FCNB.kernel(X).ntk.abs().max()))),
)
case(
    "Gelu on 1e9 inputs is finite and grows as |x|^2",
    lambda: wn.serial(wn.Dense(4), wn.Gelu(), wn.Dense(1)).kernel(X * 1e9).nngp,
    # Gelu(z) ~ relu(z) for |z| >> 1: the kernel is the ReLU one times 1e18
    Val(
        lambda k: close(
            k / 1e18,
            wn.serial(wn.Dense(4), wn.Relu(), wn.Dense(1)).kernel(X).nngp,
            1e-6 * float(k.abs().max() / 1e18),
        )
    ),
)

# ---------------------------------------------------------------- build
for name, call, pattern in [
    ("build shape 0", lambda: fc().build((0,)), r"`input_shape`.*0"),
    ("build shape 'a'", lambda: fc().build("a"), r"`input_shape` must be a tuple"),
    ("build cnn flat", lambda: cnn().build((4,)), r"Conv.*2-D window"),
    ("build device", lambda: fc().build((4,), device="nope"), r"`device`.*'nope'"),
    ("build seed True", lambda: fc().build((4,), seed=True), r"`seed`.*True"),
    ("build seed 'a'", lambda: fc().build((4,), seed="a"), r"`seed`.*'a'"),
    ("build dtype int", lambda: fc().build((4,), dtype=torch.int64), r"`dtype`.*int64"),
    ("build init str", lambda: fc().build((4,), init="orth"), r"`init`.*'orth'"),
    ("build generator int", lambda: fc().build((4,), generator=0), r"`generator`"),
]:
    case(name, call, Err(ValueError, pattern, names_argument="`" in pattern))
case(
    "build numpy seed",
    lambda: fc().build((4,), seed=np.int64(3))(X.float()),
    Val(lambda out: close(out, fc().build((4,), seed=3)(X.float()), 0)),
)

# ---------------------------------------------------------------- predict
P = wn.predict
NAN_Y = torch.full((6, 2), math.nan, dtype=torch.float64)
for name, call, exc, pattern in [
    (
        "gp k not square",
        lambda: P.gp_inference(K.nngp[:, :5], Y, KT.nngp),
        ValueError,
        r"`k_train_train` must be square",
    ),
    (
        "gp y rows",
        lambda: P.gp_inference(K.nngp, Y[:5], KT.nngp),
        ValueError,
        r"`y_train` has 5 rows",
    ),
    (
        "gp kt columns",
        lambda: P.gp_inference(K.nngp, Y, KT.nngp[:, :5]),
        ValueError,
        r"`k_test_train` must have shape",
    ),
    (
        "gp diag_reg -1",
        lambda: P.gp_inference(K.nngp, Y, KT.nngp, diag_reg=-1),
        ValueError,
        r"`diag_reg`.*-1",
    ),
    (
        "gp diag_reg nan",
        lambda: P.gp_inference(K.nngp, Y, KT.nngp, diag_reg=math.nan),
        ValueError,
        r"`diag_reg`.*nan",
    ),
    (
        "gp y nan",
        lambda: P.gp_inference(K.nngp, NAN_Y, KT.nngp),
        ValueError,
        r"`y_train` contains NaN",
    ),
    (
        "gp k nan",
        lambda: P.gp_inference(NAN_Y[:, :1] @ NAN_Y[:, :1].T, Y, KT.nngp),
        ValueError,
        r"`k_train_train` contains NaN",
    ),
    (
        "gp k asymmetric",
        lambda: P.gp_inference(
            K.nngp + torch.triu(torch.ones(6, 6, dtype=torch.float64), 1), Y, KT.nngp
        ),
        ValueError,
        r"`k_train_train` must be symmetric",
    ),
    (
        "gp k negative",
        lambda: P.gp_inference(-K.nngp, Y, KT.nngp),
        ValueError,
        r"`k_train_train`.*not positive definite.*`diag_reg`",
    ),
    (
        "gp y 3-D",
        lambda: P.gp_inference(K.nngp, Y[:, :, None], KT.nngp),
        ValueError,
        r"`y_train` must have shape",
    ),
    (
        "gp k_test_test",
        lambda: P.gp_inference(K.nngp, Y, KT.nngp, K.nngp),
        ValueError,
        r"`k_test_test` must have shape",
    ),
    (
        "gd lr 0",
        lambda: P.gradient_descent_mse(K.ntk, Y, learning_rate=0),
        ValueError,
        r"`learning_rate`.*0",
    ),
    (
        "gd lr -1",
        lambda: P.gradient_descent_mse(K.ntk, Y, learning_rate=-1),
        ValueError,
        r"`learning_rate`.*-1",
    ),
    ("gd t -1", lambda: P.gradient_descent_mse(K.ntk, Y)(-1.0), ValueError, r"`t` must be >= 0"),
    (
        "gd t nan",
        lambda: P.gradient_descent_mse(K.ntk, Y)(math.nan),
        ValueError,
        r"`t` must not be NaN",
    ),
    (
        "gd t 'a'",
        lambda: P.gradient_descent_mse(K.ntk, Y)("a"),
        TypeError,
        r"`t` must be a number.*'a'",
    ),
    ("gd t True", lambda: P.gradient_descent_mse(K.ntk, Y)(True), TypeError, r"`t`.*True"),
    (
        "gd t 2-D",
        lambda: P.gradient_descent_mse(K.ntk, Y)(torch.ones(2, 2)),
        ValueError,
        r"`t` must be a scalar or a 1-D",
    ),
    (
        "gd fx_train_0",
        lambda: P.gradient_descent_mse(K.ntk, Y)(1.0, fx_train_0=torch.ones(5, 2)),
        ValueError,
        r"`fx_train_0`",
    ),
    (
        "gd kt columns",
        lambda: P.gradient_descent_mse(K.ntk, Y)(1.0, KT.ntk[:, :4]),
        ValueError,
        r"`k_test_train`",
    ),
    ("ensemble get", lambda: P.ensemble(fc(), X, Y, XT, get="x"), ValueError, r"`get`.*'x'"),
    ("ensemble t -1", lambda: P.ensemble(fc(), X, Y, XT, t=-1), ValueError, r"`t` must be >= 0"),
    (
        "ensemble net",
        lambda: P.ensemble(torch.nn.Linear(4, 1), X, Y, XT),
        TypeError,
        r"`net` must have a method",
    ),
]:
    case(name, call, Err(exc, pattern))
case(
    "gp y as list",
    lambda: P.gp_inference(K.nngp, Y.tolist(), KT.nngp, diag_reg=1e-6)[0],
    Val(lambda m: close(m, P.gp_inference(K.nngp, Y, KT.nngp, diag_reg=1e-6)[0], 0)),
)
case(
    "gd t=inf is kernel regression",
    lambda: P.gradient_descent_mse(K.ntk, Y)(math.inf, KT.ntk),
    Val(lambda f: close(f, KT.ntk @ torch.linalg.solve(K.ntk, Y), 1e-8)),
)
case(
    "gd vector t",
    lambda: P.gradient_descent_mse(K.ntk, Y)([0.0, 1.0], KT.ntk),
    Val(lambda f: f.shape == (2, 3, 2) and close(f[0], torch.zeros(3, 2))),
)
case(
    "gd numpy kernel",
    lambda: P.gradient_descent_mse(K.ntk.numpy(), Y.numpy())(None, KT.ntk.numpy()),
    Val(lambda f: close(f, KT.ntk @ torch.linalg.solve(K.ntk, Y), 1e-8)),
)

# ---------------------------------------------------------------- empirical
E = wn.empirical
for name, call, exc, pattern in [
    (
        "ntk not a module",
        lambda: E.ntk(lambda x: x, X),
        TypeError,
        r"`model` must be a torch\.nn\.Module",
    ),
    ("ntk features", lambda: E.ntk(LIN, XT[:, :3]), ValueError, r"`model` rejected inputs `x1`"),
    ("ntk method", lambda: E.ntk(LIN, X, method="x"), ValueError, r"`method`.*'x'"),
    ("ntk batch 0", lambda: E.ntk(LIN, X, batch_size=0), ValueError, r"`batch_size`.*0"),
    ("ntk batch 2.0", lambda: E.ntk(LIN, X, batch_size=2.0), ValueError, r"`batch_size`.*2\.0"),
    ("ntk params", lambda: E.ntk(LIN, X, params=["nope"]), ValueError, r"`params`.*'nope'"),
    ("ntk no params", lambda: E.ntk(torch.nn.ReLU(), X), ValueError, r"`model` has no trainable"),
    (
        "ntk nan",
        lambda: E.ntk(LIN, torch.full((2, 4), math.nan, dtype=torch.float64)),
        ValueError,
        r"`x1` contains NaN",
    ),
    (
        "ntk meta",
        lambda: E.ntk(LIN, torch.empty(3, 4, device="meta")),
        ValueError,
        r"`x1` is on the meta",
    ),
    (
        "ntk batch-coupled model",
        lambda: E.ntk(torch.nn.Sequential(LIN, torch.nn.Softmax(dim=0)), X),
        ValueError,
        r"`model`",
    ),
    ("mc n_samples 0", lambda: E.monte_carlo(fc(), X, n_samples=0), ValueError, r"`n_samples`.*0"),
    ("mc width 0", lambda: E.monte_carlo(fc(), X, n_samples=2, width=0), ValueError, r"`width`.*0"),
    (
        "mc seed 'a'",
        lambda: E.monte_carlo(fc(), X, n_samples=2, seed="a"),
        ValueError,
        r"`seed`.*'a'",
    ),
    ("linearize int", lambda: wn.linearize(3), TypeError, r"`model` must be a torch\.nn\.Module"),
    ("taylor order 0", lambda: wn.taylor(LIN, order=0), ValueError, r"`order`.*0"),
]:
    case(name, call, Err(exc, pattern))
case(
    "ntk of a linear layer",
    lambda: E.ntk(LIN, X, XT),
    # f = W x + b: J J^T traced over outputs is x1 . x2 + 1 for each output
    Val(lambda k: close(k, X @ XT.T + 1.0, 1e-12)),
)
case(
    "ntk x2 in float32",
    lambda: E.ntk(LIN, X, XT.float()),
    Val(lambda k: close(k, X @ XT.float().double().T + 1.0, 1e-12)),
)

# ---------------------------------------------------------------- data
D = wn.data
for name, call, exc, pattern in [
    ("load unknown", lambda: D.load("nope"), ValueError, r"`name`='nope'"),
    ("load n_train 0", lambda: D.load("digits", n_train=0), ValueError, r"`n_train`.*0"),
    ("load n_train 1e3", lambda: D.load("digits", n_train=1e3), ValueError, r"`n_train`.*1000\.0"),
    ("load seed 1.5", lambda: D.load("digits", seed=1.5), ValueError, r"`seed`.*1\.5"),
    ("load size 0", lambda: D.load("digits", size=0), ValueError, r"`size`.*0"),
    ("load flatten 'no'", lambda: D.load("digits", flatten="no"), ValueError, r"`flatten`.*'no'"),
    ("mnist5k too many", lambda: D.mnist5k(n_train=5001), ValueError, r"`n_train`.*5000"),
    ("targets kind", lambda: D.load("digits").targets(kind="x"), ValueError, r"`kind`.*'x'"),
    ("teacher dim 0", lambda: D.teacher(dim=0), ValueError, r"`dim`.*0"),
    ("xor noise nan", lambda: D.xor_clusters(noise=math.nan), ValueError, r"`noise`.*nan"),
    ("modular p 2.5", lambda: D.modular_addition(p=2.5), ValueError, r"`p`.*2\.5"),
    ("iris standardize 1", lambda: D.load("iris", standardize=1), ValueError, r"`standardize`.*1"),
    ("zca regularizer -1", lambda: D.zca_whiten(X, XT, -1.0), ValueError, r"`regularizer`.*-1"),
    ("zca x_test shape", lambda: D.zca_whiten(X, XT[:, :3], 0.1), ValueError, r"`x_test`"),
]:
    case(name, call, Err(exc, pattern))
case(
    "digits flatten=False shape",
    lambda: D.load("digits", n_train=10, n_test=5, flatten=False).x_train.shape,
    Val(lambda s: tuple(s) == (10, 1, 8, 8)),
)

# ---------------------------------------------------------------- scikit-learn estimators
XN, YN = X.numpy(), Y[:, 0].numpy()
for name, call, pattern in [
    ("skl depth -1", lambda: NTKRegressor(depth=-1).fit(XN, YN), r"`depth`.*-1"),
    ("skl activation", lambda: NTKRegressor(activation="x").fit(XN, YN), r"`activation`.*'x'"),
    ("skl architecture", lambda: NTKRegressor(architecture=3).fit(XN, YN), r"`architecture`.*3"),
    ("skl input_shape", lambda: NTKRegressor(input_shape=(2, 3)).fit(XN, YN), r"`input_shape`"),
    ("skl w_std", lambda: NTKRegressor(w_std=-1).fit(XN, YN), r"`w_std`.*-1"),
    ("skl kernel_cache", lambda: NTKRegressor(kernel_cache=3).fit(XN, YN), r"`kernel_cache`"),
    ("skl t -1", lambda: NTKRegressor(t=-1).fit(XN, YN), r"`t`.*-1"),
    ("skl diag_reg -1", lambda: NTKRegressor(diag_reg=-1).fit(XN, YN), r"`diag_reg`.*-1"),
    ("skl overflowing X", lambda: NTKRegressor().fit(XN * 1e200, YN), r"`X`"),
]:
    case(name, call, Err(ValueError, pattern))
case(
    "skl regressor equals the closed form",
    lambda: NTKRegressor(architecture=fc(), diag_reg=0.0).fit(XN, YN).predict(XT.numpy()),
    Val(
        lambda p: close(
            p,
            (KT.ntk @ torch.linalg.solve(K.ntk, Y[:, :1] - Y[:, 0].mean()))[:, 0] + Y[:, 0].mean(),
            1e-8,
        )
    ),
)
case(
    "skl classifier on float labels",
    lambda: NNGPClassifier().fit(XN, YN),
    Err(ValueError, r"continuous", names_argument=False),
)

# ---------------------------------------------------------------- init and theory
for name, call, exc, pattern in [
    ("Sparse density 0", lambda: wn.init.Sparse(0.0), ValueError, r"`density`.*0\.0"),
    ("Sparse density 2", lambda: wn.init.Sparse(2.0), ValueError, r"`density`.*2\.0"),
    ("LowRank rank 0", lambda: wn.init.LowRank(0), ValueError, r"`rank`.*0"),
    ("GeneralizedGaussian beta 0", lambda: wn.init.GeneralizedGaussian(0.0), ValueError, r"`beta`"),
    ("apply to int", lambda: wn.init.apply(3, wn.init.Gaussian()), TypeError, r"`model`"),
    ("apply scheme str", lambda: wn.init.apply(LIN, "x"), TypeError, r"`scheme`.*'x'"),
    ("scaled alpha 0", lambda: wn.init.scaled(LIN, 0.0), ValueError, r"`alpha`.*0"),
    ("scaled alpha nan", lambda: wn.init.scaled(LIN, math.nan), ValueError, r"`alpha`.*nan"),
    ("q_star w -1", lambda: wn.theory.signal.q_star(wn.Relu(), -1.0), ValueError, r"`w_std`"),
    (
        "q_star 'relu'",
        lambda: wn.theory.signal.q_star("relu", 1.0),
        TypeError,
        r"`activation`.*'relu'",
    ),
    (
        "edge_of_chaos b -1",
        lambda: wn.theory.signal.edge_of_chaos(wn.Erf(), -1.0),
        ValueError,
        r"`b_std`",
    ),
]:
    case(name, call, Err(exc, pattern))
for name, call, pattern in [
    (
        "kernel_distance shapes",
        lambda: wn.theory.regime.kernel_distance(torch.ones(3, 3), torch.ones(2, 2)),
        r"same shape",
    ),
    (
        "kernel_distance zero",
        lambda: wn.theory.regime.kernel_distance(torch.zeros(3, 3), torch.ones(3, 3)),
        r"zero kernel",
    ),
    (
        "relative_weight_change models",
        lambda: wn.theory.regime.relative_weight_change(LIN, torch.nn.Linear(3, 3)),
        r"'weight' has shape",
    ),
]:
    case(name, call, Err(ValueError, pattern, names_argument=False))
case(
    "q_star of ReLU",
    lambda: wn.theory.signal.q_star(wn.Relu(), 1.2, 0.3),
    # q = w^2 q / 2 + b^2 has the fixed point b^2 / (1 - w^2 / 2)
    Val(lambda q: abs(float(q) - 0.09 / (1 - 1.44 / 2)) < 1e-9),
)

# ---------------------------------------------------------------- study configuration
S = wn.study
for name, call, pattern in [
    ("study widths []", lambda: S.resolve(widths=[]), r"`widths`"),
    ("study seeds 0", lambda: S.resolve(seeds=0), r"`seeds`.*0"),
    ("study lr -1", lambda: S.resolve(learning_rate=-1), r"`learning_rate`.*-1"),
    ("study lr 'fast'", lambda: S.resolve(learning_rate="fast"), r"`learning_rate`.*'fast'"),
    ("study dtype", lambda: S.resolve(dtype="float16"), r"`dtype`.*'float16'"),
    ("study center", lambda: S.resolve(center="yes"), r"`center`.*'yes'"),
    ("study findings", lambda: S.resolve(findings=["x"]), r"`findings`"),
    ("study sgd batch", lambda: S.resolve(sgd_batch_size=5000), r"`sgd_batch_size`.*5000"),
    (
        "study missing file",
        lambda: S.resolve("/nonexistent.toml"),
        r"config file '/nonexistent\.toml' does not exist",
    ),
    ("study data_options", lambda: S.resolve(data_options=3), r"`data_options`"),
    ("study diag_reg nan", lambda: S.resolve(diag_reg=math.nan), r"`diag_reg`.*nan"),
    ("study unknown key", lambda: S.resolve(widht=[3]), r"unknown config key"),
    ("study arch", lambda: S.resolve(arch="nope"), r"`arch`='nope'"),
    ("study zca regularizers", lambda: S.resolve(zca_regularizers=[-1]), r"`zca_regularizers`"),
]:
    case(name, call, Err(ValueError, pattern, names_argument="`" in pattern))
case("study config int", lambda: S.resolve(3), Err(TypeError, r"`config` must be a StudyConfig"))


@pytest.mark.parametrize("name", list(CASES))
def test_case(name):
    call, expect = CASES[name]
    if isinstance(expect, Err):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(expect.exc) as err:
                call()
        msg = str(err.value)
        assert re.search(expect.pattern, msg), msg
        assert "\n" not in msg.strip(), f"not one line: {msg!r}"
        if expect.names_argument:
            assert re.search(r"`[^`]+`", msg), f"names no argument: {msg!r}"
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = call()
        assert expect.check(value), f"{name}: unexpected value {value!r}"


def test_corpus_is_large():
    assert len(CASES) >= 120, len(CASES)
