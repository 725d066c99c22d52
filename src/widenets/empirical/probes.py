"""The g's of the structured NTK: g_a = d f_a / d y for the output y of every recognised
layer, from reverse passes with respect to a zero "probe" added to each layer's output
(never with respect to the weights, so no weight gradient is formed).

Two ways (see :mod:`widenets.empirical.structured` for which variant uses which):

- per example: ``vmap(jacrev)`` over the probes and the parameters outside recognised
  layers (whose Jacobians come out of the same pass), for any model;
- batched: a forward pass over a whole block of examples with a probe of shape
  (n, *y_shape) on every layer, then one reverse pass per output, as in training. Valid
  when the model treats the examples of a batch independently (checked for every method
  before it runs, :mod:`widenets.empirical._checks`): then d f_a(x_i) / d y(x_j) = 0 for
  i != j, and the gradient of sum_i f_a(x_i) with respect to the probe is every
  example's g_a at once. Where the g's of several outputs are small, their reverse passes
  run as one pass over a batch of one-hot cotangents (at most ``reverse_batch`` outputs,
  :data:`REVERSE_SCALARS` scalars of g's).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.func import jacrev, vmap
from torch.utils._pytree import tree_map

from widenets.empirical._common import Batch, call
from widenets.empirical.layer_structure import LayerSpec

#: most outputs whose reverse passes run as one batched pass (the default of
#: ``reverse_batch``), and most scalars of layer g's such a pass returns
REVERSE_BATCH = 64
REVERSE_SCALARS = 1 << 22


class Probes:
    """Reverse passes through zero probes on the outputs of ``specs``' layers.

    ``params``: the differentiated parameters; ``fixed``: the model's state with the
    parameters of recognised layers (held fixed: their derivatives come from the g's);
    ``rest``: the differentiated parameters outside recognised layers (per example only).
    """

    def __init__(
        self,
        model,
        specs: list[LayerSpec],
        params: dict,
        fixed: dict,
        rest: dict,
        n_out: int,
        reverse_batch: int = REVERSE_BATCH,
    ):
        self.model, self.specs, self.params = model, specs, params
        self.fixed, self.rest, self.n_out = fixed, rest, n_out
        self.reverse_batch = reverse_batch

    # ------------------------------------------------------------ per example
    def per_example(self, batch: Batch):
        """Per-example g = df/dy (n, O, *y_shape) of every layer, the layers' inputs, and
        the Jacobians {name: (n, O, numel)} of the parameters outside recognised layers."""
        specs, model, fixed = self.specs, self.model, self.fixed

        def f(probes, rest, tree):
            tree = tree_map(lambda t: t.unsqueeze(0), tree)
            inputs, handles = {}, []
            for s in specs:

                def hook(mod, args, out, key=s.key):
                    inputs[key] = args[0]
                    return out + probes[key]

                handles.append(s.module.register_forward_hook(hook))
            try:
                out = call(model, {**fixed, **rest}, tree, 1)[0]
            finally:
                for h in handles:
                    h.remove()
            return out, inputs

        dtype = next(iter(self.params.values())).dtype
        device = next(iter(self.params.values())).device
        probes = {s.key: torch.zeros((1, *s.y_shape), dtype=dtype, device=device) for s in specs}
        (g, jrest), h = vmap(jacrev(f, argnums=(0, 1), has_aux=True), in_dims=(None, None, 0))(
            probes, self.rest, batch.tree()
        )
        n = batch.n
        g = {k: v.reshape(n, v.shape[1], *v.shape[3:]) for k, v in g.items()}
        h = {k: v.reshape(n, *v.shape[2:]) for k, v in h.items()}
        jrest = {k: v.reshape(n, v.shape[1], -1) for k, v in jrest.items()}
        return g, h, jrest

    # ------------------------------------------------------------ batched
    def forward(self, batch: Batch):
        """A batched forward pass with a zero probe on every layer's output:
        (outputs (n, O), probes {key: (n, *y_shape)}, layer inputs {key: tensor})."""
        n = batch.n
        ref = next(iter(self.params.values()))
        probes, inputs, handles = {}, {}, []
        for s in self.specs:
            p = ref.new_zeros(()).expand(n, *s.y_shape).requires_grad_()
            probes[s.key] = p

            def hook(mod, args, out, key=s.key):
                inputs[key] = args[0].detach()
                return out + probes[key]

            handles.append(s.module.register_forward_hook(hook))
        try:
            out = call(self.model, self.fixed, batch.tree(), n)
        finally:
            for h in handles:
                h.remove()
        return out, probes, inputs

    def reverse(self, out: Tensor, probes: dict, outputs, on_grad) -> None:
        """One reverse pass per output a in ``outputs``; ``on_grad(spec, g, a)`` receives
        each layer's g = d f_a / d y (n, *y_shape) as soon as it is computed, which is
        then freed (layers that f_a does not depend on are skipped). Where the g's of
        several outputs are small, their passes run batched (``_batched_reverse``)."""
        if not out.requires_grad:
            return
        outputs = list(outputs)
        if len(outputs) > 1 and self._batched_reverse(out, probes, outputs, on_grad):
            return
        handles, current = [], [None]
        for s in self.specs:

            def hook(p, s=s):
                g, p.grad = p.grad, None
                on_grad(s, g, current[0])

            handles.append(probes[s.key].register_post_accumulate_grad_hook(hook))
        try:
            for i, a in enumerate(outputs):
                current[0] = a
                torch.autograd.backward(
                    out[:, a].sum(),
                    inputs=list(probes.values()),
                    retain_graph=i < len(outputs) - 1,
                )
        finally:
            for hd in handles:
                hd.remove()

    def _batched_reverse(self, out: Tensor, probes: dict, outputs: list, on_grad) -> bool:
        """The reverse passes of up to ``reverse_batch`` outputs at once, as one pass over
        a batch of one-hot cotangents (autograd's ``is_grads_batched``, a vmap), while
        their g's stay within REVERSE_SCALARS: with a wide readout (Monte-Carlo kernels of
        widenets' own networks) the per-output passes were mostly call overhead. False,
        having delivered nothing, when that is not worth it or autograd cannot batch."""
        per_output = out.shape[0] * sum(math.prod(s.y_shape) for s in self.specs)
        c = min(self.reverse_batch, len(outputs), REVERSE_SCALARS // max(1, per_output))
        if c < 2:
            return False
        inputs = [probes[s.key] for s in self.specs]
        for k, a0 in enumerate(range(0, len(outputs), c)):
            chunk = outputs[a0 : a0 + c]
            basis = out.new_zeros((len(chunk), *out.shape))
            for m, a in enumerate(chunk):
                basis[m, :, a] = 1.0
            try:
                gs = torch.autograd.grad(
                    out,
                    inputs,
                    grad_outputs=basis,
                    retain_graph=True,
                    allow_unused=True,
                    is_grads_batched=True,
                )
            except RuntimeError:
                if k == 0:  # nothing delivered yet: the caller loops over outputs
                    return False
                raise
            for m, a in enumerate(chunk):
                for s, g in zip(self.specs, gs, strict=True):
                    if g is not None:
                        on_grad(s, g[m], a)
            del gs
        return True

    def batched(self, batch: Batch):
        """The same as :meth:`per_example` (no Jacobians: every parameter is in a
        recognised layer), from batched passes, the g's of all outputs held."""
        n = batch.n
        g = {
            s.key: self.params[s.weight or s.bias].new_zeros((n, self.n_out, *s.y_shape))
            for s in self.specs
        }

        def keep(s, gs, a):
            g[s.key][:, a] = gs

        with torch.enable_grad():
            out, probes, h = self.forward(batch)
            self.reverse(out, probes, range(self.n_out), keep)
        return g, h, {}
