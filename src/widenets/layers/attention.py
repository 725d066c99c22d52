"""Global multi-head self-attention over all spatial positions, both faces.

Infinite-width limit in the number of heads and of key/value channels (Hron et al. 2020,
"Infinite attention: NNGP and NTK for deep attention networks"; Neural Tangents'
``GlobalSelfAttention``). With ``linear_scaling`` the query-key products are divided by
n_key (not sqrt(n_key)) and the key and query weights are tied, so the logits of an input
x converge to the constant w_q w_k K(x, x)[p, p'] and the attention weights to

    A(x) = softmax over p' of (w_q w_k K(x, x)[p, p']),

and, with the values Gaussian with covariance w_v^2 K:

    K'(x, y)[p, p'] = w_o^2 w_v^2 sum_{r, r'} A(x)[p, r] A(y)[p', r'] K(x, y)[r, r'] + b^2,
    Theta'           = w_o^2 w_v^2 A(x) Theta A(y)^T + 2 (K' - b^2) + b^2

(the output and value weights contribute K' - b^2 each; the tied query-key weights
contribute nothing in the limit). With ``linear_scaling=False`` (standard 1/sqrt(n_key)
attention) the limit has no closed form: the finite network works, the kernel raises.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from widenets.errors import check_nonnegative, check_positive_int
from widenets.kernel import Kernel
from widenets.layers.base import BuildContext, Layer
from widenets.spatial_modules import SelfAttentionModule

MECHANISMS = ("softmax", "identity")


class GlobalSelfAttention(Layer):
    """Multi-head self-attention over every position of (C, L) or (C, H, W) inputs.

    Args:
        n_chan_out, n_chan_key, n_chan_val, n_heads: finite sizes.
        linear_scaling: divide query-key products by n_key and tie key and query weights
            (the tractable limit); False for 1/sqrt(n_key) with independent weights.
        w_key_std, w_value_std, w_query_std, w_out_std, b_std: parameter scales (NTK
            parameterisation); b_std None for no bias.
        attention_mechanism: "softmax" or "identity" (the logits themselves).
    """

    name = "GlobalSelfAttention"
    mixes_positions = True
    handles_packed_pairs = False  # the full layout only

    def __init__(
        self,
        n_chan_out: int,
        n_chan_key: int,
        n_chan_val: int,
        n_heads: int,
        linear_scaling: bool = True,
        w_key_std: float = 1.0,
        w_value_std: float = 1.0,
        w_query_std: float = 1.0,
        w_out_std: float = 1.0,
        b_std: float | None = None,
        attention_mechanism: str = "softmax",
    ):
        self.n_chan_out = check_positive_int(n_chan_out, "n_chan_out")
        self.n_chan_key = check_positive_int(n_chan_key, "n_chan_key")
        self.n_chan_val = check_positive_int(n_chan_val, "n_chan_val")
        self.n_heads = check_positive_int(n_heads, "n_heads")
        self.linear_scaling = bool(linear_scaling)
        self.w_key_std = check_nonnegative(w_key_std, "w_key_std")
        self.w_value_std = check_nonnegative(w_value_std, "w_value_std")
        self.w_query_std = check_nonnegative(w_query_std, "w_query_std")
        self.w_out_std = check_nonnegative(w_out_std, "w_out_std")
        self.b_std = check_nonnegative(b_std, "b_std", allow_none=True)
        mech = str(attention_mechanism).lower()
        if mech not in MECHANISMS:
            raise ValueError(
                f"`attention_mechanism` must be one of {MECHANISMS}, got {attention_mechanism!r}."
            )
        self.attention_mechanism = mech

    def __repr__(self):
        return (
            f"GlobalSelfAttention({self.n_chan_out}, key={self.n_chan_key}, "
            f"val={self.n_chan_val}, heads={self.n_heads}, linear_scaling={self.linear_scaling})"
        )

    def out_shape(self, in_shape):
        if not isinstance(in_shape, tuple):
            raise ValueError(f"{self!r} takes a single input, got {len(in_shape)} branches.")
        if len(in_shape) < 2:
            raise ValueError(
                f"{self!r} attends over positions: it needs a sequence (C, L) or an image "
                f"(C, H, W) per example, channels first, got per-example shape {in_shape}."
            )
        return (self.n_chan_out, *in_shape[1:])

    def _weights(self, cov: Tensor, d: int) -> Tensor:
        """A(x): (N, P, P) attention weights from the full self-covariance (N, S1, S1', ...)."""
        n = cov.shape[0]
        # (N, S1, S1', S2, S2') -> (N, S1, S2, S1', S2') -> (N, P, P)
        perm = [0, *range(1, 2 * d + 1, 2), *range(2, 2 * d + 2, 2)]
        p = math.prod(cov.shape[1::2])
        logits = cov.permute(perm).reshape(n, p, p) * (self.w_query_std * self.w_key_std)
        if self.attention_mechanism == "softmax":
            return torch.softmax(logits, dim=-1)
        return logits

    def kernel_fn(self, k: Kernel) -> Kernel:
        self.out_shape(k.shape1)
        if not self.linear_scaling:
            raise ValueError(
                f"{self!r}: with linear_scaling=False (1/sqrt(n_key) logits) the infinite-"
                "width kernel has no closed form; use linear_scaling=True."
            )
        if not k.full_spatial:
            raise ValueError(f"{self!r} needs the full pixel-pair kernel (got the diagonal one).")
        d = k.n_spatial
        spatial = tuple(k.cov1.shape[1::2])
        p = math.prod(spatial)
        a1 = self._weights(k.cov1, d)
        a2 = a1 if k.cov2 is k.cov1 else self._weights(k.cov2, d)
        ov = (self.w_out_std * self.w_value_std) ** 2
        b_var = 0.0 if self.b_std is None else self.b_std**2
        perm = [0, 1, *range(2, 2 * d + 2, 2), *range(3, 2 * d + 3, 2)]
        inv = [0] * (2 * d + 2)
        for i, q in enumerate(perm):
            inv[q] = i
        pair_shape = (*spatial, *spatial)

        def weigh_pair(t):  # A1 t A2^T per (i, j), back to the interleaved layout
            n1, n2 = t.shape[:2]
            m = t.permute(perm).reshape(n1, n2, p, p)
            m = torch.einsum("ipr,ijrs,jqs->ijpq", a1, m, a2)
            return m.reshape(n1, n2, *pair_shape).permute(inv)

        def weigh_self(t, a):
            n = t.shape[0]
            m = t.permute([q - 1 for q in perm[1:]]).reshape(n, p, p)
            m = a @ m @ a.transpose(1, 2)
            return m.reshape(n, *pair_shape).permute([q - 1 for q in inv[1:]])

        bases = []  # w_o^2 w_v^2 A K A^T, which the NTK needs

        def nngp_map(nngp, _):
            base = weigh_pair(nngp) * ov
            bases.append(base)
            return base + b_var if b_var else base

        def ntk_map(ntk, _):  # the output and value weights add K' - b^2 each
            ntk = weigh_pair(ntk) * ov + 2 * bases[0]
            if b_var:
                ntk += b_var
            return ntk

        def variances(cov, which):
            return weigh_self(cov, a1 if which == 1 else a2) * ov + b_var

        out = (self.n_chan_out, *k.shape1[1:])
        return k.map(
            nngp_map,
            ntk=ntk_map,
            cov=variances,
            shape1=out,
            shape2=out,
            is_gaussian=True,
            is_input=False,
        )

    def pair_cost(self, in_shape) -> int:
        return 3

    def make_module(self, in_shape, ctx: BuildContext):
        self.out_shape(in_shape)
        c = in_shape[0]
        g = ctx.generator

        def draw(*shape):
            return torch.randn(shape, generator=g, dtype=ctx.dtype)

        h, nk, nv = self.n_heads, self.n_chan_key, self.n_chan_val
        wq = draw(h, nk, c)
        wk = None if self.linear_scaling else draw(h, nk, c)
        wv = draw(h, nv, c)
        wo = draw(self.n_chan_out, h * nv)
        bias = None if self.b_std is None else draw(self.n_chan_out)
        stds = (
            self.w_query_std,
            self.w_key_std,
            self.w_value_std,
            self.w_out_std,
            0.0 if self.b_std is None else self.b_std,
        )
        return SelfAttentionModule(
            wq, wk, wv, wo, bias, stds, self.linear_scaling, self.attention_mechanism
        ).to(device=ctx.device)

    def _rewidth(self, width, keep):
        new = GlobalSelfAttention(
            self.n_chan_out if keep else width,
            width,
            width,
            self.n_heads,
            self.linear_scaling,
            self.w_key_std,
            self.w_value_std,
            self.w_query_std,
            self.w_out_std,
            self.b_std,
            self.attention_mechanism,
        )
        return new, False
