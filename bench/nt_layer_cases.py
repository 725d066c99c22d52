"""Networks with the layers of Neural Tangents that widenets added in issue 21, each written
for both libraries: (label, widenets network factory, Neural Tangents expression).

The expression is evaluated in Neural Tangents' interpreter (``stax`` imported) on NHWC
inputs, the widenets network on the same inputs as NCHW. Imported by ``nt_parity.py``
(``--layers``) and by ``tests/test_nt_layers.py``, which compares widenets' kernels with the
values Neural Tangents gave for these networks (``tests/data/nt_layers.npz``, written by
``nt_parity.py --layers --write-reference``), so the test needs no Neural Tangents.

Differences of convention handled here (documented in the layers): widenets' spatial
layers default to ``padding="same"`` where Neural Tangents' default to "VALID", and
``SumPool``'s stride defaults to its window (NT: 1); ``Index`` takes the per-example index
(channels first, no batch axis), NT's the whole NHWC index.
"""

from __future__ import annotations

import widenets as wn

W, B = 1.3, 0.2  # weight and bias standard deviations of the affine layers
CH = 3  # finite channels (the standard parameterisation's NTK depends on them)


def _conv(**kw):
    return wn.Conv(CH, (3, 3), w_std=W, b_std=B, **kw)


_NT_CONV = f"stax.Conv({CH}, (3, 3), padding='SAME', W_std={W}, b_std={B})"
_NT_CONV_STD = (
    f"stax.Conv({CH}, (3, 3), padding='SAME', W_std={W}, b_std={B}, parameterization='standard')"
)


def _nt(*layers: str) -> str:
    return "stax.serial(" + ", ".join(layers) + ")"


GAP_NT = ["stax.GlobalAvgPool()", f"stax.Dense(1, W_std={W}, b_std={B})"]
FLAT_NT = ["stax.Flatten()", f"stax.Dense(1, W_std={W}, b_std={B})"]


def _gap():
    return [wn.GlobalAvgPool(), wn.Dense(1, w_std=W, b_std=B)]


def _flat():
    return [wn.Flatten(), wn.Dense(1, w_std=W, b_std=B)]


#: (label, widenets factory, Neural Tangents expression); inputs are images (C=2, 6, 5)
CASES = [
    (
        "SumPool same stride 1",
        lambda: wn.serial(_conv(), wn.Relu(), wn.SumPool(2, stride=1, padding="same"), *_gap()),
        _nt(_NT_CONV, "stax.Relu()", "stax.SumPool((2, 2), (1, 1), 'SAME')", *GAP_NT),
    ),
    (
        "SumPool valid window 2",
        lambda: wn.serial(_conv(), wn.Erf(), _conv(), wn.SumPool(2), wn.Relu(), *_flat()),
        _nt(
            _NT_CONV,
            "stax.Erf()",
            _NT_CONV,
            "stax.SumPool((2, 2), (2, 2), 'VALID')",
            "stax.Relu()",
            *FLAT_NT,
        ),
    ),
    (
        "SumPool circular (3, 2)",
        lambda: wn.serial(
            _conv(), wn.Relu(), wn.SumPool((3, 2), stride=(2, 1), padding="circular"), *_gap()
        ),
        _nt(_NT_CONV, "stax.Relu()", "stax.SumPool((3, 2), (2, 1), 'CIRCULAR')", *GAP_NT),
    ),
    (
        "GlobalSumPool",
        lambda: wn.serial(_conv(), wn.Relu(), wn.GlobalSumPool(), wn.Dense(1, w_std=W)),
        _nt(_NT_CONV, "stax.Relu()", "stax.GlobalSumPool()", f"stax.Dense(1, W_std={W})"),
    ),
    (
        "FanInProd conv",
        lambda: wn.serial(
            _conv(),
            wn.fan_out(2),
            wn.parallel(_conv(), wn.serial(wn.Relu(), wn.Conv(CH, (1, 3), w_std=0.9))),
            wn.fan_in_prod(),
            *_gap(),
        ),
        _nt(
            _NT_CONV,
            "stax.FanOut(2)",
            f"stax.parallel({_NT_CONV}, stax.serial(stax.Relu(), "
            f"stax.Conv({CH}, (1, 3), padding='SAME', W_std=0.9)))",
            "stax.FanInProd()",
            *GAP_NT,
        ),
    ),
    (
        "FanInProd dense x3",
        lambda: wn.serial(
            wn.Flatten(),
            wn.Dense(CH, w_std=W, b_std=B),
            wn.fan_out(3),
            wn.parallel(
                wn.Dense(CH, w_std=W, b_std=B),
                wn.serial(wn.Erf(), wn.Dense(CH, w_std=0.8)),
                wn.serial(wn.Relu(), wn.Dense(CH, w_std=1.1, b_std=0.5)),
            ),
            wn.fan_in_prod(),
            wn.Dense(CH, w_std=W, b_std=B),
            wn.Relu(),
            wn.Dense(1, w_std=W),
        ),
        _nt(
            "stax.Flatten()",
            f"stax.Dense({CH}, W_std={W}, b_std={B})",
            "stax.FanOut(3)",
            f"stax.parallel(stax.Dense({CH}, W_std={W}, b_std={B}), "
            f"stax.serial(stax.Erf(), stax.Dense({CH}, W_std=0.8)), "
            f"stax.serial(stax.Relu(), stax.Dense({CH}, W_std=1.1, b_std=0.5)))",
            "stax.FanInProd()",
            f"stax.Dense({CH}, W_std={W}, b_std={B})",
            "stax.Relu()",
            f"stax.Dense(1, W_std={W})",
        ),
    ),
    (
        "repeat dense x3",
        lambda: wn.serial(
            wn.Flatten(),
            wn.Dense(CH, w_std=W, b_std=B),
            wn.repeat(wn.serial(wn.Relu(), wn.Dense(CH, w_std=W, b_std=B)), 3),
            wn.Dense(1, w_std=W),
        ),
        _nt(
            "stax.Flatten()",
            f"stax.Dense({CH}, W_std={W}, b_std={B})",
            f"stax.repeat(stax.serial(stax.Relu(), stax.Dense({CH}, W_std={W}, b_std={B})), 3)",
            f"stax.Dense(1, W_std={W})",
        ),
    ),
    (
        "repeat conv x2 standard",
        lambda: wn.serial(
            _conv(parameterization="standard"),
            wn.repeat(wn.serial(wn.Erf(), _conv(parameterization="standard")), 2),
            *_flat(),
        ),
        _nt(
            _NT_CONV_STD,
            f"stax.repeat(stax.serial(stax.Erf(), {_NT_CONV_STD}), 2)",
            *FLAT_NT,
        ),
    ),
    (
        "Index crop and reverse",
        lambda: wn.serial(_conv(), wn.Relu(), wn.Index(wn.Slice[:, 1:5, ::-2]), _conv(), *_gap()),
        _nt(_NT_CONV, "stax.Relu()", "stax.Index(stax.Slice[:, 1:5, ::-2, :])", _NT_CONV, *GAP_NT),
    ),
    (
        "Index drops an axis",
        lambda: wn.serial(
            _conv(),
            wn.Relu(),
            wn.Index(wn.Slice[..., 2]),
            wn.Conv(CH, 3, w_std=W),
            wn.Relu(),
            *_flat(),
        ),
        _nt(
            _NT_CONV,
            "stax.Relu()",
            "stax.Index(stax.Slice[:, :, 2, :])",
            f"stax.Conv({CH}, (3,), padding='SAME', W_std={W})",
            "stax.Relu()",
            *FLAT_NT,
        ),
    ),
    (
        "Index to features",
        lambda: wn.serial(_conv(), wn.Relu(), wn.Index(wn.Slice[:, 3, -1]), wn.Dense(1, w_std=W)),
        _nt(
            _NT_CONV,
            "stax.Relu()",
            "stax.Index(stax.Slice[:, 3, -1, :])",
            f"stax.Dense(1, W_std={W})",
        ),
    ),
    (
        "ConvTranspose same stride 2",
        lambda: wn.serial(
            _conv(),
            wn.Relu(),
            wn.ConvTranspose(CH, (3, 2), stride=2, w_std=W, b_std=B),
            wn.Relu(),
            *_gap(),
        ),
        _nt(
            _NT_CONV,
            "stax.Relu()",
            f"stax.ConvTranspose({CH}, (3, 2), (2, 2), 'SAME', W_std={W}, b_std={B})",
            "stax.Relu()",
            *GAP_NT,
        ),
    ),
    (
        "ConvTranspose valid standard",
        lambda: wn.serial(
            wn.ConvTranspose(
                CH, 3, stride=(1, 2), padding="valid", w_std=W, b_std=B, parameterization="standard"
            ),
            wn.Relu(),
            *_flat(),
        ),
        _nt(
            f"stax.ConvTranspose({CH}, (3, 3), (1, 2), 'VALID', W_std={W}, b_std={B}, "
            "parameterization='standard')",
            "stax.Relu()",
            *FLAT_NT,
        ),
    ),
    (
        "ConvTranspose flatten stride 3",
        lambda: wn.serial(
            _conv(),
            wn.Erf(),
            wn.ConvTranspose(CH, 2, stride=3, w_std=W),
            wn.Relu(),
            *_flat(),
        ),
        _nt(
            _NT_CONV,
            "stax.Erf()",
            f"stax.ConvTranspose({CH}, (2, 2), (3, 3), 'SAME', W_std={W})",
            "stax.Relu()",
            *FLAT_NT,
        ),
    ),
    (
        "ConvLocal pooled",
        lambda: wn.serial(
            _conv(), wn.Relu(), wn.ConvLocal(CH, 3, w_std=W, b_std=B), wn.Relu(), *_gap()
        ),
        _nt(
            _NT_CONV,
            "stax.Relu()",
            f"stax.ConvLocal({CH}, (3, 3), padding='SAME', W_std={W}, b_std={B})",
            "stax.Relu()",
            *GAP_NT,
        ),
    ),
    (
        "ConvLocal valid standard",
        lambda: wn.serial(
            wn.ConvLocal(
                CH,
                (2, 3),
                stride=(2, 1),
                padding="valid",
                w_std=W,
                b_std=B,
                parameterization="standard",
            ),
            wn.Erf(),
            *_flat(),
        ),
        _nt(
            f"stax.ConvLocal({CH}, (2, 3), (2, 1), 'VALID', W_std={W}, b_std={B}, "
            "parameterization='standard')",
            "stax.Erf()",
            *FLAT_NT,
        ),
    ),
]

# ----- DotGeneral and ImageResize -------------------------------------------------------------
# Constants as exact lists (floats by repr) so both libraries multiply by the same numbers.
# Axes: widenets counts the whole NCHW input (H = 2, W = 3), Neural Tangents the NHWC one
# (H = 1, W = 2). Neural Tangents' finite DotGeneral puts its batch axes (and an lhs's free
# axes) before the examples, so its readouts name where the batch axis went; widenets keeps
# (N, C) first. Neural Tangents 0.6.5's ImageResize kernel ignores ``Kernel.is_reversed``
# (its Conv stores the spatial axes reversed, flipping at each Conv), so after an odd
# number of convolutions it resizes H by W's size and the reverse: the cases resize where
# the kernel is not reversed (at the input, after two convolutions).
_R = [[0.7, -1.1, 0.4, 1.3], [-0.2, 0.9, 1.5, -0.6], [1.2, 0.3, -0.8, 0.5],
      [-1.4, 0.6, 0.2, 0.8], [0.1, -0.7, 1.1, -0.3], [0.9, 1.0, -0.5, 0.4]]  # fmt: skip
_V6 = [0.8, -1.2, 0.5, 1.1, -0.4, 0.9]
_V5 = [1.3, -0.6, 0.2, -1.0, 0.7]
_B52 = [[0.6, -1.1], [1.2, 0.4], [-0.3, 0.9], [0.8, 1.5], [-1.0, 0.2]]
_L536 = [[[0.3 * ((i + 2 * j + 3 * k) % 5 - 2) + 0.1 * (i - k) for k in range(6)]
          for j in range(3)] for i in range(5)]  # fmt: skip


def _T(m):  # transpose of a list of lists
    return [list(r) for r in zip(*m, strict=True)]


def _np(a) -> str:
    return f"np.array({a!r})"


CASES += [
    (
        "DotGeneral scalar",
        lambda: wn.serial(_conv(), wn.DotGeneral(rhs=2.0), wn.Relu(), *_gap()),
        _nt(_NT_CONV, "stax.DotGeneral(rhs=2.0)", "stax.Relu()", *GAP_NT),
    ),
    (
        "DotGeneral rhs contracts H",
        lambda: wn.serial(
            _conv(),
            wn.DotGeneral(rhs=_V6, dimension_numbers=(((2,), (0,)), ((), ()))),
            wn.Relu(),
            wn.Conv(CH, 3, w_std=W, b_std=B),
            wn.Relu(),
            *_flat(),
        ),
        _nt(
            _NT_CONV,
            f"stax.DotGeneral(rhs={_np(_V6)}, dimension_numbers=(((1,), (0,)), ((), ())))",
            "stax.Relu()",
            f"stax.Conv({CH}, (3,), padding='SAME', W_std={W}, b_std={B})",
            "stax.Relu()",
            *FLAT_NT,
        ),
    ),
    (
        "DotGeneral rhs maps H to 4",
        lambda: wn.serial(
            _conv(),
            wn.DotGeneral(rhs=_R, dimension_numbers=(((2,), (0,)), ((), ()))),
            wn.Erf(),
            *_flat(),
        ),
        _nt(
            _NT_CONV,
            f"stax.DotGeneral(rhs={_np(_R)}, dimension_numbers=(((1,), (0,)), ((), ())))",
            "stax.Erf()",
            *FLAT_NT,
        ),
    ),
    (
        "DotGeneral lhs maps H to 4",
        lambda: wn.serial(
            _conv(),
            wn.DotGeneral(lhs=_T(_R), dimension_numbers=(((1,), (2,)), ((), ()))),
            wn.Relu(),
            *_gap(),
        ),
        _nt(
            _NT_CONV,
            f"stax.DotGeneral(lhs={_np(_T(_R))}, dimension_numbers=(((1,), (1,)), ((), ())))",
            "stax.Relu()",
            "stax.GlobalAvgPool(batch_axis=1, channel_axis=-1)",  # NT: (4, N, W, C)
            GAP_NT[1],
        ),
    ),
    (
        "DotGeneral rhs pairs W",
        lambda: wn.serial(
            _conv(),
            wn.DotGeneral(rhs=_V5, dimension_numbers=(((), ()), ((3,), (0,)))),
            wn.Relu(),
            *_flat(),
        ),
        _nt(
            _NT_CONV,
            f"stax.DotGeneral(rhs={_np(_V5)}, dimension_numbers=(((), ()), ((2,), (0,))))",
            "stax.Relu()",
            "stax.Flatten(batch_axis=1)",  # NT: (W, N, H, C)
            FLAT_NT[1],
        ),
    ),
    (
        "DotGeneral rhs pairs W, free axis",
        lambda: wn.serial(
            _conv(),
            wn.DotGeneral(rhs=_B52, dimension_numbers=(((), ()), ((3,), (0,)))),
            wn.Relu(),
            *_gap(),
        ),
        _nt(
            _NT_CONV,
            f"stax.DotGeneral(rhs={_np(_B52)}, dimension_numbers=(((), ()), ((2,), (0,))))",
            "stax.Relu()",
            "stax.GlobalAvgPool(batch_axis=1, channel_axis=3)",  # NT: (W, N, H, C, 2)
            GAP_NT[1],
        ),
    ),
    (
        "DotGeneral lhs pairs W contracts H",
        lambda: wn.serial(
            _conv(),
            wn.DotGeneral(lhs=_L536, dimension_numbers=(((2,), (2,)), ((0,), (3,)))),
            wn.Relu(),
            *_flat(),
        ),
        _nt(
            _NT_CONV,
            f"stax.DotGeneral(lhs={_np(_L536)}, dimension_numbers=(((2,), (1,)), ((0,), (2,))))",
            "stax.Relu()",
            "stax.Flatten(batch_axis=2)",  # NT: (W, 3, N, C)
            FLAT_NT[1],
        ),
    ),
    (
        "ImageResize linear up",
        lambda: wn.serial(
            wn.ImageResize((-1, -1, 9, 8), "linear"), _conv(), wn.Relu(), _conv(), *_gap()
        ),  # fmt: skip
        _nt(
            "stax.ImageResize((-1, 9, 8, -1), 'linear')", _NT_CONV, "stax.Relu()", _NT_CONV, *GAP_NT
        ),  # fmt: skip
    ),
    (
        "ImageResize linear down antialias",
        lambda: wn.serial(
            _conv(),
            wn.Relu(),
            _conv(),
            wn.ImageResize((-1, -1, 4, 3), "bilinear"),
            wn.Erf(),
            *_flat(),
        ),  # fmt: skip
        _nt(
            _NT_CONV,
            "stax.Relu()",
            _NT_CONV,
            "stax.ImageResize((-1, 4, 3, -1), 'bilinear')",
            "stax.Erf()",
            *FLAT_NT,
        ),  # fmt: skip
    ),
    (
        "ImageResize linear down H only",
        lambda: wn.serial(
            wn.ImageResize((-1, -1, 3, -1), "linear", antialias=False), _conv(), wn.Relu(), *_flat()
        ),  # fmt: skip
        _nt(
            "stax.ImageResize((-1, 3, -1, -1), 'linear', antialias=False)",
            _NT_CONV,
            "stax.Relu()",
            *FLAT_NT,
        ),  # fmt: skip
    ),
    (
        "ImageResize nearest flatten",
        lambda: wn.serial(
            _conv(),
            wn.Relu(),
            _conv(),
            wn.ImageResize((-1, -1, 4, 8), "nearest"),
            wn.Relu(),
            *_flat(),
        ),  # fmt: skip
        _nt(
            _NT_CONV,
            "stax.Relu()",
            _NT_CONV,
            "stax.ImageResize((-1, 4, 8, -1), 'nearest')",
            "stax.Relu()",
            *FLAT_NT,
        ),  # fmt: skip
    ),
    (
        "ImageResize nearest pooled",
        lambda: wn.serial(
            wn.ImageResize((-1, -1, 11, 3), "nearest"), _conv(), wn.Relu(), *_gap()
        ),  # fmt: skip
        _nt("stax.ImageResize((-1, 11, 3, -1), 'nearest')", _NT_CONV, "stax.Relu()", *GAP_NT),
    ),
]
