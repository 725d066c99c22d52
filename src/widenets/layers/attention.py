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
from dataclasses import field

import torch
from torch import Tensor, nn

from widenets.errors import check_nonnegative, check_positive_int
from widenets.init.schemes import draw_bias, draw_weight
from widenets.kernel import Kernel
from widenets.layers.base import (
    INNER_WIDTH,
    WIDTH,
    BuildContext,
    Layer,
    WeightedModule,
    declare,
)
from widenets.layers.masking import check_some_unmasked

MECHANISMS = ("softmax", "identity")


@declare
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

    n_chan_out: int = field(metadata=WIDTH)
    n_chan_key: int = field(metadata=INNER_WIDTH)
    n_chan_val: int = field(metadata=INNER_WIDTH)
    n_heads: int
    linear_scaling: bool = True
    w_key_std: float = 1.0
    w_value_std: float = 1.0
    w_query_std: float = 1.0
    w_out_std: float = 1.0
    b_std: float | None = None
    attention_mechanism: str = "softmax"

    def __post_init__(self):
        self.n_chan_out = check_positive_int(self.n_chan_out, "n_chan_out")
        self.n_chan_key = check_positive_int(self.n_chan_key, "n_chan_key")
        self.n_chan_val = check_positive_int(self.n_chan_val, "n_chan_val")
        self.n_heads = check_positive_int(self.n_heads, "n_heads")
        self.linear_scaling = bool(self.linear_scaling)
        self.w_key_std = check_nonnegative(self.w_key_std, "w_key_std")
        self.w_value_std = check_nonnegative(self.w_value_std, "w_value_std")
        self.w_query_std = check_nonnegative(self.w_query_std, "w_query_std")
        self.w_out_std = check_nonnegative(self.w_out_std, "w_out_std")
        self.b_std = check_nonnegative(self.b_std, "b_std", allow_none=True)
        mech = str(self.attention_mechanism).lower()
        if mech not in MECHANISMS:
            raise ValueError(
                f"`attention_mechanism` must be one of {MECHANISMS}, got "
                f"{self.attention_mechanism!r}."
            )
        self.attention_mechanism = mech

    def out_shape(self, in_shape):
        if not isinstance(in_shape, tuple):
            raise ValueError(f"{self!r} takes a single input, got {len(in_shape)} branches.")
        if len(in_shape) < 2:
            raise ValueError(
                f"{self!r} attends over positions: it needs a sequence (C, L) or an image "
                f"(C, H, W) per example, channels first, got per-example shape {in_shape}."
            )
        return (self.n_chan_out, *in_shape[1:])

    def _weights(self, cov: Tensor, d: int, mask: Tensor | None = None) -> Tensor:
        """A(x): (N, P, P) attention weights from the full self-covariance (N, S1, S1', ...);
        masked positions (``mask`` (N, S...), True) are no keys."""
        n = cov.shape[0]
        # (N, S1, S1', S2, S2') -> (N, S1, S2, S1', S2') -> (N, P, P)
        perm = [0, *range(1, 2 * d + 1, 2), *range(2, 2 * d + 2, 2)]
        p = math.prod(cov.shape[1::2])
        logits = cov.permute(perm).reshape(n, p, p) * (self.w_query_std * self.w_key_std)
        if mask is not None:
            fill = -math.inf if self.attention_mechanism == "softmax" else 0.0
            logits = logits.masked_fill(mask.flatten(1).unsqueeze(1), fill)
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
        if k.mask1 is not None:
            check_some_unmasked(self, k)
        a1 = self._weights(k.cov1, d, k.mask1)
        a2 = a1 if k.cov2 is k.cov1 else self._weights(k.cov2, d, k.mask2)
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
        h, nk, nv, c, out = (
            self.n_heads, self.n_chan_key, self.n_chan_val, in_shape[0], self.n_chan_out
        )  # fmt: skip
        tied = self.linear_scaling  # the key weights are the query weights
        shapes = ((h, nk, c), None if tied else (h, nk, c), (h, nv, c), (out, h * nv), (out,))
        stds = (
            self.w_query_std,
            self.w_key_std,
            self.w_value_std,
            self.w_out_std,
            0.0 if self.b_std is None else self.b_std,
        )
        weights = _draw_attention(ctx.init, ctx.generator, shapes, self.b_std, ctx.dtype)
        return GlobalSelfAttentionModule(
            *weights, stds, self.linear_scaling, self.attention_mechanism
        ).to(device=ctx.device)


def _draw_attention(scheme, generator, shapes, b_std, dtype, device=None):
    """wq, wk, wv, wo of ``shapes`` (wk's None when tied) from ``scheme``, each drawn as one
    (rows, C) matrix (all heads stacked), then the bias N(0, 1) (None when ``b_std`` is
    None), in that order."""
    out = []
    for shape in shapes[:4]:
        if shape is None:
            out.append(None)
            continue
        rows, fan_in = math.prod(shape[:-1]), shape[-1]
        w = draw_weight(scheme, (rows, fan_in), fan_in, generator, dtype, device)
        out.append(w.reshape(shape))
    out.append(None if b_std is None else draw_bias(shapes[4], generator, dtype, device))
    return out


class GlobalSelfAttentionModule(WeightedModule):
    """Multi-head self-attention over all spatial positions of (N, C, *spatial).

    For head h, with X the (P, C) positions-by-channels input:
    Q_h = w_q X Wq_h^T / sqrt(C), K_h = w_k X Wk_h^T / sqrt(C), V_h = w_v X Wv_h^T / sqrt(C),
    A_h = softmax(Q_h K_h^T / n_key) (``linear_scaling``, Wk = Wq tied) or
    softmax(Q_h K_h^T / sqrt(n_key)), out = concat_h(A_h V_h) w_o Wo^T / sqrt(H n_val) + b_std b.
    Every weight has unit-variance entries (NTK parameterisation); the query, key and value
    weights of all heads together are one (H n, C) matrix for an init scheme.
    """

    def __init__(self, wq, wk, wv, wo, bias, stds, linear_scaling, mechanism="softmax"):
        super().__init__()
        self.wq = nn.Parameter(wq)  # (H, n_key, C)
        self.wk = None if wk is None else nn.Parameter(wk)
        self.wv = nn.Parameter(wv)  # (H, n_val, C)
        self.wo = nn.Parameter(wo)  # (C_out, H * n_val)
        self.bias = None if bias is None else nn.Parameter(bias)
        self.q_std, self.k_std, self.v_std, self.o_std, self.b_std = stds
        self.linear_scaling = linear_scaling
        self.mechanism = mechanism

    @torch.no_grad()
    def reset_parameters(self, scheme=None, generator: torch.Generator | None = None) -> None:
        """Redraw wq, wk, wv, wo and the bias as ``build`` draws them (``_draw_attention``)."""
        params = (self.wq, self.wk, self.wv, self.wo, self.bias)
        shapes = tuple(None if p is None else tuple(p.shape) for p in params)
        b_std = None if self.bias is None else self.b_std
        new = _draw_attention(scheme, generator, shapes, b_std, self.wq.dtype, self.wq.device)
        for p, v in zip(params, new, strict=True):
            if p is not None:
                p.copy_(v)

    def forward(self, x, key_mask=None):
        """``key_mask`` (N, *spatial), True at positions that are no keys (padding: their
        logits -inf before the softmax, 0 for the identity mechanism), or None."""
        n, c = x.shape[:2]
        spatial = x.shape[2:]
        xs = x.flatten(2).transpose(1, 2)  # (N, P, C)
        s = 1.0 / math.sqrt(c)
        q = torch.einsum("npc,hkc->nhpk", xs, self.wq) * (self.q_std * s)
        wk = self.wq if self.wk is None else self.wk
        k = torch.einsum("npc,hkc->nhpk", xs, wk) * (self.k_std * s)
        v = torch.einsum("npc,hvc->nhpv", xs, self.wv) * (self.v_std * s)
        n_key = q.shape[-1]
        scale = 1.0 / n_key if self.linear_scaling else 1.0 / math.sqrt(n_key)
        a = q @ k.transpose(-1, -2) * scale  # (N, H, P, P) logits
        if key_mask is not None:
            fill = -math.inf if self.mechanism == "softmax" else 0.0
            a = a.masked_fill(key_mask.flatten(1)[:, None, None, :], fill)
        if self.mechanism == "softmax":
            a = torch.softmax(a, dim=-1)
        heads = a @ v  # (N, H, P, n_val)
        heads = heads.permute(0, 2, 1, 3).flatten(2)  # (N, P, H * n_val)
        out = heads @ self.wo.T * (self.o_std / math.sqrt(heads.shape[-1]))
        if self.bias is not None:
            out = out + self.bias * self.b_std
        return out.transpose(1, 2).reshape(n, -1, *spatial)
