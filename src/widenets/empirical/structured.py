"""The structured empirical NTK (Novak et al. 2022, "Fast Finite Width Neural Tangent
Kernel"): the NTK contribution of every recognised affine layer from the g's of its
output, never from its (out x fan_in) Jacobian per output.

A layer y_l = s_w W u_l + s_b b (:mod:`widenets.empirical.layer_structure`) with
g_a,l = d f_a / d y_l (:mod:`widenets.empirical.probes`) has

    d f_a / d W = s_w sum_l g_a,l u_l^T,      d f_a / d b = s_b sum_l g_a,l,

    Theta_W(x1, x2)[a, b] = s_w^2 sum_{l, m} (u_l(x1) . u_m(x2)) (g_a,l(x1) . g_b,m(x2)).

Each layer is contracted in one of three modes (chosen by
:func:`widenets.empirical.choice.choose`):

- "factored", one position (dense layers on vectors): a product of two Gram matrices,
  O(N^2 (fan_in + out)) instead of O(N^2 fan_in out);
- "pairwise", many positions (weights shared across them): position pair by position
  pair, N^2 L^2 (fan_in + O out);
- "materialised": the per-example weight gradient sum_l g u^T formed from the factors and
  contracted, N O L out fan_in + N^2 O out fan_in.

A normalisation layer y = gamma * xhat + beta has d f_a / d gamma = sum g_a * xhat and
d f_a / d beta = sum g_a over the positions that share a parameter: small per-example
Jacobians ("norm"), formed from g without a weight pass.

How the g's are computed and contracted (:data:`VARIANTS`):

- "per_example": ``vmap(jacrev)`` probes, any model; parameters outside recognised layers
  get their Jacobians in the same pass and are contracted with the rest.
- "batched": batched forward and reverse passes over a block (every differentiated
  parameter in a recognised layer), the g's of all outputs held; the untraced kernel.
- "streamed" (traced): one forward pass per tile over both blocks and one reverse pass per
  output, each layer's g contracted into the tile as soon as the pass reaches it.
- "per_output" (traced): one output's features of each block, formed in chunks of
  examples (a forward and a reverse pass each), then contracted: holds features instead
  of a whole block's activations.

Neither the Jacobian nor, traced, the g's of all outputs are ever held.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from widenets.empirical._common import Batch, cat_batches
from widenets.empirical._methods import contract
from widenets.empirical.layer_structure import LayerSpec, norm_reduce_axes
from widenets.empirical.probes import REVERSE_BATCH, Probes

#: how the g's are computed and contracted (see the module docstring)
VARIANTS = ("per_example", "batched", "streamed", "per_output")
#: how each layer is contracted: by the variant's cost, or fixed for a norm / dense layer
MODES = ("factored", "pairwise", "materialised", "norm")


def norm_jacobians(spec: LayerSpec, g: Tensor, xhat: Tensor, lead: int) -> dict:
    """{name: (*g.shape[:lead], params)} Jacobians of a normalisation layer's gamma, beta
    from g (*lead axes, *y_shape) and xhat (n, *y_shape); ``lead`` is 1 (examples) or 2
    (examples, outputs)."""
    red = tuple(lead + i for i in norm_reduce_axes(spec.adapter.param_axes, len(spec.y_shape)))
    out = {}
    if spec.weight is not None:
        x = xhat if lead == 1 else xhat.unsqueeze(1)
        jw = (g * x).sum(red) if red else g * x
        out[spec.weight] = jw.reshape(*g.shape[:lead], -1)
    if spec.bias is not None:
        jb = g.sum(red) if red else g
        out[spec.bias] = jb.reshape(*g.shape[:lead], -1)
    return out


@dataclass
class _Feats:
    """One layer's features for one output and a block of examples."""

    flat: Tensor | None = None  # (n, d): contracted as flat1 @ flat2.T
    r: Tensor | None = None  # s_w times the weight rows: (n, out) factored, (n, L, out) pairwise
    u: Tensor | None = None  # the matching patches (n, fan_in) or (n, L, fan_in), if kept

    def split(self, na: int):
        def part(t, sl):
            return None if t is None else t[sl]

        first, second = slice(0, na), slice(na, None)
        return (
            _Feats(part(self.flat, first), part(self.r, first), part(self.u, first)),
            _Feats(part(self.flat, second), part(self.r, second), part(self.u, second)),
        )


class StructuredMethod:
    """Structured derivatives for recognised layers, Jacobians for the rest, in one of
    :data:`VARIANTS` with one of :data:`MODES` per layer (``modes``: {layer key: mode}),
    as :func:`widenets.empirical.choice.choose` decided. ``chunk``: examples per pass of
    "per_output"; ``reverse_batch``: most outputs per batched reverse pass.
    """

    name = "structured"
    symmetric_right = True

    def __init__(
        self,
        model,
        params,
        frozen,
        n_out,
        trace,
        specs,
        variant,
        modes,
        chunk=None,
        reverse_batch=REVERSE_BATCH,
    ):
        self.model, self.params, self.frozen = model, params, frozen
        self.n_out, self.trace, self.specs = n_out, trace, specs
        covered = {s.weight for s in specs} | {s.bias for s in specs}
        self.rest = {k: v for k, v in params.items() if k not in covered}
        self.fixed = {**frozen, **{k: v for k, v in params.items() if k in covered}}
        if variant not in VARIANTS:
            raise ValueError(f"`variant` must be one of {VARIANTS}, got {variant!r}.")
        if self.rest and variant != "per_example":
            raise ValueError(
                f"`variant` {variant!r} needs every parameter in a recognised layer; "
                f"{len(self.rest)} are not: use 'per_example'."
            )
        if not trace and variant in ("streamed", "per_output"):
            raise ValueError(f"`variant` {variant!r} computes traced kernels only.")
        if set(modes) != {s.key for s in specs} or not set(modes.values()) <= set(MODES):
            raise ValueError(f"`modes` must map every layer to one of {MODES}, got {modes!r}.")
        self.variant, self.chunk, self.modes = variant, chunk, modes
        self.probes = Probes(model, specs, params, self.fixed, self.rest, n_out, reverse_batch)

    def _features(self, s: LayerSpec, g: Tensor, h: Tensor, keep_u: bool) -> _Feats:
        """One layer's features of one output from its g (n, *y_shape) and input h."""
        if s.norm:
            xhat = s.adapter.normalise(s.module, h)
            parts = list(norm_jacobians(s, g, xhat, 1).values())
            return _Feats(flat=torch.cat(parts, 1) if len(parts) > 1 else parts[0])
        ad, mode = s.adapter, self.modes[s.key]
        flat, r, u = [], None, None
        rows = ad.rows(g.unsqueeze(1))[:, 0]  # (n, L, out)
        if s.bias is not None:
            flat.append(ad.sb * rows.sum(1))
        if s.weight is not None:
            if mode == "factored":
                r = ad.sw * rows[:, 0]
                u = ad.patches(h)[:, 0] if keep_u else None
            elif mode == "pairwise":
                r = ad.sw * rows
                u = ad.patches(h) if keep_u else None
            else:
                flat.append(ad.sw * _weight_grads(s, h, g))
        flat = None if not flat else (torch.cat(flat, 1) if len(flat) > 1 else flat[0])
        return _Feats(flat, r, u)

    def _contract(self, s: LayerSpec, f1: _Feats, f2: _Feats, uu=None) -> Tensor:
        """One layer's (n1, n2) traced term of one output."""
        term = None if f1.flat is None else f1.flat @ f2.flat.T
        if f1.r is not None:
            if f1.r.ndim == 2:  # factored: (u1 . u2) (r1 . r2)
                uu = f1.u @ f2.u.T if uu is None else uu
                w = uu * (f1.r @ f2.r.T)
            else:  # pairwise: sum over position pairs
                uu = torch.einsum("ilf,jmf->ijlm", f1.u, f2.u) if uu is None else uu
                w = (uu * torch.einsum("ilo,jmo->ijlm", f1.r, f2.r)).sum((2, 3))
            term = w if term is None else term + w
        return term

    # ------------------------------------------------------------ features and tiles
    def left(self, batch: Batch):
        if self.variant in ("streamed", "per_output"):
            return batch  # everything happens tile by tile, in pair
        if self.variant == "batched":
            g, h, jac = self.probes.batched(batch)
        else:
            g, h, jac = self.probes.per_example(batch)
        factors = []
        for s in self.specs:
            if s.norm:
                xhat = s.adapter.normalise(s.module, h[s.key])
                jac.update(norm_jacobians(s, g[s.key], xhat, 2))
                continue
            r = s.adapter.rows(g[s.key])  # (n, O, L, out)
            if s.bias is not None:
                jac[s.bias] = s.adapter.sb * r.sum(2)
            if s.weight is None:
                continue
            mode = self.modes[s.key]
            if mode == "materialised":
                jac[s.weight] = s.adapter.sw * torch.stack(
                    [_weight_grads(s, h[s.key], g[s.key][:, a]) for a in range(r.shape[1])], 1
                )
            else:
                factors.append((mode, s.adapter.sw, s.adapter.patches(h[s.key]), r))
        return factors, jac

    def right(self, batch: Batch):
        return self.left(batch)

    def pair(self, left, right) -> Tensor:
        if self.variant == "streamed":
            return self._streamed_pair(left, right)
        if self.variant == "per_output":
            return self._per_output_pair(left, right)
        (fac1, jac1), (fac2, jac2) = left, right
        out = contract(jac1, jac2, self.trace) if jac1 else None
        for (mode, sw, u1, r1), (_, _, u2, r2) in zip(fac1, fac2, strict=True):
            term = _factored_term(mode, u1, r1, u2, r2, self.trace) * sw**2
            out = term if out is None else out + term
        return out

    def _streamed_pair(self, a_batch: Batch, b_batch: Batch) -> Tensor:
        """Traced tile from one forward pass over both blocks and one reverse pass per
        output; each layer's g is contracted into the tile when the pass reaches it."""
        same = a_batch is b_batch
        both = a_batch if same else cat_batches([a_batch, b_batch])
        na = a_batch.n

        def split(t):
            return (t, t) if same else (t[:na], t[na:])

        with torch.enable_grad():
            out, probes, h = self.probes.forward(both)
            static = {}  # output-independent Gram matrices of the patches
            for s in self.specs:
                mode = "norm" if s.norm else self.modes[s.key]
                if s.weight is None or mode not in ("factored", "pairwise"):
                    continue
                u = s.adapter.patches(h[s.key])
                u1, u2 = split(u[:, 0] if mode == "factored" else u)
                static[s.key] = (
                    u1 @ u2.T if mode == "factored" else torch.einsum("ilf,jmf->ijlm", u1, u2)
                )
            tile = out.new_zeros((na, na if same else both.n - na))

            def on_grad(s, g, a):
                f = self._features(s, g, h[s.key], keep_u=False)
                f1, f2 = (f, f) if same else f.split(na)
                tile.add_(self._contract(s, f1, f2, static.get(s.key)))

            self.probes.reverse(out, probes, range(self.n_out), on_grad)
        return tile / self.n_out

    def _output_features(self, batch: Batch, a: int) -> dict:
        """{key: _Feats} of output a for every layer, in chunks of ``self.chunk`` examples
        (written into buffers for the whole block, so no chunk outlives its pass)."""
        chunk = self.chunk or batch.n
        whole: dict = {}
        ref = next(iter(self.params.values()))
        for i in range(0, batch.n, chunk):
            i1 = min(i + chunk, batch.n)
            part = batch.slice(i, i1)
            got: dict = {}
            with torch.enable_grad():
                out, probes, h = self.probes.forward(part)

                def on_grad(s, g, a, got=got, h=h):
                    got[s.key] = self._features(s, g, h[s.key], keep_u=True)

                self.probes.reverse(out, probes, [a], on_grad)
            for s in self.specs:
                f = got.pop(s.key, None)
                if f is None:  # f_a does not depend on this layer
                    zero = ref.new_zeros((part.n, *s.y_shape))
                    f = self._features(s, zero, h[s.key], keep_u=True)
                if s.key not in whole:
                    whole[s.key] = _Feats(
                        *(
                            None if t is None else t.new_empty((batch.n, *t.shape[1:]))
                            for t in (f.flat, f.r, f.u)
                        )
                    )
                w = whole[s.key]
                for dst, src in ((w.flat, f.flat), (w.r, f.r), (w.u, f.u)):
                    if dst is not None:
                        dst[i:i1] = src
            del out, probes, h
        return whole

    def _per_output_pair(self, a_batch: Batch, b_batch: Batch) -> Tensor:
        """Traced tile, one output at a time: that output's features of both blocks."""
        same = a_batch is b_batch
        tile = None
        for a in range(self.n_out):
            f1 = self._output_features(a_batch, a)
            f2 = f1 if same else self._output_features(b_batch, a)
            for s in self.specs:
                term = self._contract(s, f1[s.key], f2[s.key])
                tile = term if tile is None else tile + term
            del f1, f2  # before the next output's features are formed
        return tile / self.n_out


def _weight_grads(s: LayerSpec, h: Tensor, g: Tensor) -> Tensor:
    """Per-example weight gradient (before s_w) of one output, (n, out * fan_in)."""
    if s.adapter.weight_grads is not None:
        return s.adapter.weight_grads(h, g)
    u = s.adapter.patches(h)  # (n, L, fan_in)
    r = s.adapter.rows(g.unsqueeze(1))[:, 0]  # (n, L, out)
    return torch.bmm(r.transpose(1, 2), u).reshape(g.shape[0], -1)


def _factored_term(mode, u1, r1, u2, r2, trace) -> Tensor:
    """A layer's tile (before s_w^2) from patches u (n, L, fan_in) and rows
    r (n, O, L, out): sum_{l, m} (u1_l . u2_m) (r1_a,l . r2_b,m), (n1, n2, O, O), or traced
    the mean over a = b, (n1, n2); "factored" (L = 1) as a product of two Grams."""
    o = r1.shape[1]
    if mode == "factored":  # one position: (u1 . u2) (g1 . g2)
        uu = u1[:, 0] @ u2[:, 0].T
        if trace:
            gg = r1[:, :, 0].reshape(r1.shape[0], -1) @ r2[:, :, 0].reshape(r2.shape[0], -1).T / o
            return uu * gg
        return uu[:, :, None, None] * torch.einsum("iao,jbo->ijab", r1[:, :, 0], r2[:, :, 0])
    uu = torch.einsum("ilf,jmf->ijlm", u1, u2)
    if trace:
        gg = torch.einsum("ialo,jamo->ijlm", r1, r2) / o
        return (uu * gg).sum((2, 3))
    return torch.einsum("ijlm,ialo,jbmo->ijab", uu, r1, r2)
