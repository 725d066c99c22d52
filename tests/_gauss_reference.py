"""Independent reference for the quadrature kernels of the smooth activations.

E[f(u) f(v)] for (u, v) ~ N(0, [[q1, c sqrt(q1 q2)], [c sqrt(q1 q2), q2]]) by nested
adaptive Gauss-Kronrod quadrature (scipy ``quad``), of the functions and their derivatives
written here with ``math`` (not the library's torch code), split at z1 = 0 and where v = 0.

Run as a script it stores reference values on a grid of variances (1e-2 to 10, equal and
unequal) and correlations (-1 to 1, |c| up to within 1e-12 of 1) in
``tests/data/smooth_reference.json``:

    PYTHONPATH=src python tests/_gauss_reference.py
"""

import json
import math
import warnings
from pathlib import Path

from scipy.integrate import quad

L = 12.0
SQ = 1.0 / math.sqrt(2.0 * math.pi)
PATH = Path(__file__).parent / "data" / "smooth_reference.json"


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _sp(x):
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


#: name -> (constructor keywords, phi, phi' differentiated by hand)
FUNCTIONS = {
    "Tanh": ({}, math.tanh, lambda x: 1.0 / math.cosh(x) ** 2),
    "Sigmoid": ({}, _sig, lambda x: _sig(x) * _sig(-x)),
    "Silu": ({}, lambda x: x * _sig(x), lambda x: _sig(x) * (1 + x * _sig(-x))),
    "Swish": (
        {"beta": 2.0},
        lambda x: x * _sig(2 * x),
        lambda x: _sig(2 * x) * (1 + 2 * x * _sig(-2 * x)),
    ),
    "Softplus": ({"beta": 0.5}, lambda x: 2 * _sp(x / 2), lambda x: _sig(x / 2)),
    "Mish": (
        {},
        lambda x: x * math.tanh(_sp(x)),
        lambda x: math.tanh(_sp(x)) + x * _sig(x) / math.cosh(_sp(x)) ** 2,
    ),
}

VARIANCES = [
    (0.01, 0.01),
    (0.1, 0.1),
    (1.0, 1.0),
    (3.0, 3.0),
    (10.0, 10.0),
    (0.01, 10.0),
    (0.3, 10.0),
    (1.0, 5.0),
    (10.0, 2.0),
]
CORRELATIONS = [
    -1.0,
    -1.0 + 1e-12,
    -0.9999,
    -0.99,
    -0.9,
    -0.5,
    0.0,
    0.2,
    0.7,
    0.95,
    0.999,
    1.0 - 1e-6,
    1.0 - 1e-12,
    1.0,
]


def _gauss(f, lo, hi):
    with warnings.catch_warnings():  # quad's round-off notice near 1e-15 absolute error
        warnings.simplefilter("ignore")
        return quad(
            lambda z: f(z) * math.exp(-z * z / 2) * SQ,
            lo,
            hi,
            epsabs=1e-15,
            epsrel=1e-13,
            limit=200,
        )[0]


def _pieces(f, cuts):
    edges = [-L] + sorted(min(max(t, -L), L) for t in cuts) + [L]
    return sum(_gauss(f, lo, hi) for lo, hi in zip(edges[:-1], edges[1:], strict=True))


def reference(f, q1, q2, c, breaks=(0.0,)):
    """E[f(u) f(v)], u = sqrt(q1) z1, v = sqrt(q2)(c z1 + s z2), nested adaptive quadrature
    split where u or v crosses a point of ``breaks`` (a kink, or where the activations
    change fastest: 0) and in z1 where the inner integral is steepest."""
    s, a, b = math.sqrt(max((1 - c) * (1 + c), 0.0)), math.sqrt(q1), math.sqrt(q2)

    def inner(z1):
        if s == 0.0:
            return f(b * c * z1)
        g = lambda z2: f(b * (c * z1 + s * z2))  # noqa: E731
        return _pieces(g, [(br - b * c * z1) / (b * s) for br in breaks])

    h = lambda z1: f(a * z1) * inner(z1)  # noqa: E731
    cuts = [br / a for br in breaks] + [br / (b * c) for br in breaks if br != 0 and c != 0]
    return _pieces(h, cuts)


def main():
    out = {"variances": VARIANCES, "correlations": CORRELATIONS, "values": {}}
    for name, (_, f, df) in FUNCTIONS.items():
        rows = []
        for q1, q2 in VARIANCES:
            for c in CORRELATIONS:
                rows.append([q1, q2, c, reference(f, q1, q2, c), reference(df, q1, q2, c)])
        # E[f(u)^2] at each variance: the Cauchy-Schwarz scale of the error criterion
        scale = {}
        for q in sorted({q for pair in VARIANCES for q in pair}):
            scale[repr(q)] = [reference(f, q, q, 1.0), reference(df, q, q, 1.0)]
        out["values"][name] = {"rows": rows, "self": scale}
        print(name, "done", flush=True)
    tmp = PATH.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1))
    tmp.replace(PATH)


if __name__ == "__main__":
    main()
