"""Graph and masking networks written in both libraries, for the Neural Tangents parity.

``bench/nt_parity.py --structures`` computes each case in Neural Tangents 0.6.5 (the
``nt`` source, evaluated with ``stax`` in scope) and widenets (``net``) on the inputs
``inputs(case)`` makes; ``--write-references`` stores the inputs and Neural Tangents'
values in ``tests/data/nt_structures.json``, which ``tests/test_graph.py`` and
``tests/test_masking.py`` compare against without Neural Tangents.
"""

from __future__ import annotations

import numpy as np

import widenets as wn

W, B = 1.3, 0.4  # weight and bias standard deviations of every affine layer
PAD = -7.0  # the mask constant of the masked cases

NCH = "dimension_numbers=('NCH', 'OIH', 'NCH')"
NCHW = "dimension_numbers=('NCHW', 'OIHW', 'NCHW')"


def _agg(axis="None", impl="DENSE"):
    return (
        f"stax.Aggregate(aggregate_axis={axis}, batch_axis=0, channel_axis=1, "
        f"implementation={impl!r})"
    )


def _conv1(width, k=1, bias=True):
    b = B if bias else None
    return f"stax.Conv({width}, ({k},), padding='SAME', W_std={W}, b_std={b}, {NCH})"


def _gap():
    return "stax.GlobalAvgPool(batch_axis=0, channel_axis=1)"


def _gin_nt(impl):
    # Neural Tangents' composition: FanInSum adds the branches' kernels as if independent,
    # which the identity and aggregate branches are not (the finite GIN is one Aggregate
    # over A + I: tests/test_graph.py); the parity is of the same composition in both.
    # The per-vertex affine map first: A (x W) = (A x) W, and Neural Tangents' FanInSum
    # needs Gaussian branches
    block = (
        f"{_conv1(6)}, stax.FanOut(2), stax.parallel(stax.Identity(), {_agg(impl=impl)}), "
        "stax.FanInSum(), stax.Relu()"
    )
    return f"stax.serial({block}, {block}, {_gap()}, stax.Dense(1, W_std={W}, b_std={B}))"


def _gin_wn(impl):
    def block():
        return wn.serial(
            wn.Conv(6, 1, w_std=W, b_std=B),
            wn.fan_out(2),
            wn.parallel(wn.Identity(), wn.Aggregate(implementation=impl)),
            wn.fan_in_sum(),
            wn.Relu(),
        )

    return wn.serial(block(), block(), wn.GlobalAvgPool(), wn.Dense(1, w_std=W, b_std=B))


def _conv_gap_nt():
    return (
        f"stax.serial({_conv1(5, 3)}, stax.Relu(), {_conv1(5, 3)}, stax.Relu(), {_gap()}, "
        f"stax.Dense(1, W_std={W}, b_std={B}))"
    )


def _conv_gap_wn():
    return wn.serial(
        wn.Conv(5, 3, w_std=W, b_std=B),
        wn.Relu(),
        wn.Conv(5, 3, w_std=W, b_std=B),
        wn.Relu(),
        wn.GlobalAvgPool(),
        wn.Dense(1, w_std=W, b_std=B),
    )


def _attention_nt():
    att = (
        "stax.GlobalSelfAttention(5, 4, 4, 2, linear_scaling=True, W_key_std=0.9, "
        "W_value_std=1.1, W_query_std=0.9, W_out_std=1.2, b_std=0.2, batch_axis=0, "
        "channel_axis=1)"
    )
    return (
        f"stax.serial({_conv1(5)}, {att}, stax.Relu(), {_gap()}, "
        f"stax.Dense(1, W_std={W}, b_std={B}))"
    )


def _attention_wn():
    return wn.serial(
        wn.Conv(5, 1, w_std=W, b_std=B),
        wn.GlobalSelfAttention(
            5, 4, 4, 2, w_key_std=0.9, w_value_std=1.1, w_query_std=0.9, w_out_std=1.2, b_std=0.2
        ),
        wn.Relu(),
        wn.GlobalAvgPool(),
        wn.Dense(1, w_std=W, b_std=B),
    )


def _flatten_nt():
    return (
        f"stax.serial({_conv1(5, 3)}, stax.Erf(), stax.Flatten(), "
        f"stax.Dense(1, W_std={W}, b_std={B}))"
    )


def _flatten_wn():
    return wn.serial(
        wn.Conv(5, 3, w_std=W, b_std=B), wn.Erf(), wn.Flatten(), wn.Dense(1, w_std=W, b_std=B)
    )


def _agg2d_nt(axis):
    conv = f"stax.Conv(4, (1, 1), W_std={W}, b_std={B}, {NCHW})"
    return f"stax.serial({conv}, {_agg(axis)}, stax.Relu(), {conv}, {_gap()})"


def _agg2d_wn(axis):
    return wn.serial(
        wn.Conv(4, 1, w_std=W, b_std=B),
        wn.Aggregate(aggregate_axis=axis),
        wn.Relu(),
        wn.Conv(4, 1, w_std=W, b_std=B),
        wn.GlobalAvgPool(),
    )


def _avgpool_nt(pool):
    return (
        f"stax.serial({_conv1(4, 3)}, stax.Relu(), {pool}, {_conv1(4, 3)}, stax.Relu(), {_gap()})"
    )


def _avgpool_wn(pool):
    return wn.serial(
        wn.Conv(4, 3, w_std=W, b_std=B),
        wn.Relu(),
        pool,
        wn.Conv(4, 3, w_std=W, b_std=B),
        wn.Relu(),
        wn.GlobalAvgPool(),
    )


def _transpose_nt(k, stride):
    return (
        f"stax.ConvTranspose(4, ({k},), ({stride},), padding='SAME', W_std={W}, b_std={B}, {NCH})"
    )


#: a band of nonnegative weights (output j reads inputs j..j+2): Neural Tangents' DotGeneral
#: mask rule (the signed sum of unmasked inputs) and widenets' (any unmasked input with a
#: nonzero weight) agree when no sum can cancel
_BAND = [[0.5 + 0.1 * i if j <= i <= j + 2 else 0.0 for j in range(5)] for i in range(7)]

_POOL_VALID = "stax.AvgPool((2,), (2,), 'VALID', batch_axis=0, channel_axis=1)"
_POOL_SAME = "stax.AvgPool((3,), (1,), 'SAME', batch_axis=0, channel_axis=1)"

#: name -> (widenets network factory, Neural Tangents network source, kind)
CASES = {
    "gin_dense": (lambda: _gin_wn("dense"), _gin_nt("DENSE"), "graph"),
    "gin_sparse": (lambda: _gin_wn("sparse"), _gin_nt("SPARSE"), "edges"),
    "aggregate_2d_both_axes": (lambda: _agg2d_wn((2, 3)), _agg2d_nt("(2, 3)"), "graph2d"),
    "aggregate_2d_last_axis": (lambda: _agg2d_wn(3), _agg2d_nt("3"), "graph2d_rows"),
    "masked_conv_gap": (_conv_gap_wn, _conv_gap_nt(), "masked"),
    "masked_attention": (_attention_wn, _attention_nt(), "masked"),
    "masked_flatten": (_flatten_wn, _flatten_nt(), "masked"),
    "masked_avgpool_valid": (
        lambda: _avgpool_wn(wn.AvgPool(2)),
        _avgpool_nt(_POOL_VALID),
        "masked",
    ),
    "masked_avgpool_same": (
        lambda: _avgpool_wn(wn.AvgPool(3, stride=1, padding="same")),
        _avgpool_nt(_POOL_SAME),
        "masked",
    ),
    "masked_conv_transpose": (
        lambda: _avgpool_wn(wn.ConvTranspose(4, 3, w_std=W, b_std=B)),
        _avgpool_nt(_transpose_nt(3, 1)),
        "masked",
    ),
    "masked_conv_transpose_stride2": (
        lambda: _avgpool_wn(wn.ConvTranspose(4, 2, stride=2, w_std=W, b_std=B)),
        _avgpool_nt(_transpose_nt(2, 2)),
        "masked",
    ),
    "masked_index": (
        lambda: _avgpool_wn(wn.Index(wn.Slice[:, ::-2])),
        _avgpool_nt("stax.Index(stax.Slice[:, :, ::-2], batch_axis=0, channel_axis=1)"),
        "masked",
    ),
    "masked_image_resize": (
        lambda: _avgpool_wn(wn.ImageResize((-1, -1, 11), "linear")),
        _avgpool_nt("stax.ImageResize((-1, -1, 11), 'linear', batch_axis=0, channel_axis=1)"),
        "masked",
    ),
    "masked_dot_general": (
        lambda: _avgpool_wn(wn.DotGeneral(rhs=_BAND, dimension_numbers=(((2,), (0,)), ((), ())))),
        _avgpool_nt(
            f"stax.DotGeneral(rhs=np.array({_BAND!r}), dimension_numbers=(((2,), (0,)), ((), ())), "
            "batch_axis=0, channel_axis=1)"
        ),
        "masked",
    ),
}


def inputs(kind: str, seed: int = 0) -> dict[str, np.ndarray]:
    """x1 (3 inputs), x2 (2 inputs) and their patterns, or masked (padded) sequences."""
    rng = np.random.default_rng(seed)
    n1, n2, c = 3, 2, 3
    if kind in ("graph", "edges"):
        v = 5
        out = {"x1": rng.standard_normal((n1, c, v)), "x2": rng.standard_normal((n2, c, v))}
        for name, n in (("p1", n1), ("p2", n2)):
            a = (rng.random((n, v, v)) < 0.4).astype(np.float64)
            if kind == "graph":
                out[name] = a * rng.uniform(0.5, 1.5, a.shape)  # weighted arcs
            else:
                e = 9
                arcs = rng.integers(0, v, (n, e, 2))
                arcs[0, -3:] = -1  # padding arcs (dropped)
                arcs[1, -1, 1] = -1
                out[name] = arcs.astype(np.int64)
        return out
    if kind.startswith("graph2d"):
        h, w = 3, 4
        shape = (h, w, h, w) if kind == "graph2d" else (w, w)
        out = {"x1": rng.standard_normal((n1, c, h, w)), "x2": rng.standard_normal((n2, c, h, w))}
        out["p1"] = (rng.random((n1, *shape)) < 0.4).astype(np.float64)
        out["p2"] = (rng.random((n2, *shape)) < 0.4).astype(np.float64)
        return out
    if kind == "masked":
        length = 7
        xs = []
        for n, lengths in ((n1, (3, 7, 5)), (n2, (4, 6))):
            x = np.full((n, c, length), PAD)
            for i, m in enumerate(lengths):
                x[i, :, :m] = rng.standard_normal((c, m))
            xs.append(x)
        return {"x1": xs[0], "x2": xs[1]}
    raise ValueError(kind)


def kernel_kwargs(kind: str, arrays: dict, same: bool) -> dict:
    """``net.kernel`` keywords of a case (patterns or the mask constant)."""
    if kind == "masked":
        return {"mask_constant": PAD}
    if same:
        return {"pattern": arrays["p1"]}
    return {"pattern": (arrays["p1"], arrays["p2"])}
