"""The infinite-width kernel record passed from layer to layer.

At infinite width the covariance of a layer's outputs over channels is K (x) I, so the
record stores only the per-channel kernels (Neural Tangents' convention):

- ``nngp[i, j]`` = E[f(x1_i) f(x2_j)] for one output channel (the NNGP kernel);
- ``ntk[i, j]``  = <df(x1_i)/dtheta, df(x2_j)/dtheta> for one channel (the NTK);
- ``cov1[i]``    = E[f(x1_i)^2] and ``cov2[j]`` = E[f(x2_j)^2], the per-input variances that
  nonlinearities need to normalise ``nngp`` into a correlation.

Leading axes are the batch axes (N1, N2); any trailing axes hold spatial positions
(added by the convolutional layers).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)
class Kernel:
    """Immutable infinite-width state of a network at one layer.

    Attributes:
        nngp: (N1, N2, ...) NNGP kernel per output channel, or None when not requested.
        ntk: (N1, N2, ...) NTK per output channel, or None when not requested.
        cov1: (N1, ...) variances E[f(x1)^2].
        cov2: (N2, ...) variances E[f(x2)^2] (the same tensor as cov1 when x2 is x1).
        shape1, shape2: per-example shapes of the finite network's activations at this
            layer, channels first; the channel count is the finite width (used by the
            standard parameterisation, whose NTK depends on it).
        x1_is_x2: the kernel is of a set of inputs with itself.
        is_gaussian: the layer's outputs are a Gaussian process at infinite width (true
            after an affine layer): the closed forms of nonlinearities assume it.
        is_input: the kernel is still the input kernel (no layer applied yet).
    """

    nngp: Tensor | None
    ntk: Tensor | None
    cov1: Tensor
    cov2: Tensor
    shape1: tuple[int, ...]
    shape2: tuple[int, ...]
    x1_is_x2: bool = False
    is_gaussian: bool = False
    is_input: bool = True

    def replace(self, **changes) -> Kernel:
        """A copy with some fields changed (the record itself never changes)."""
        return dataclasses.replace(self, **changes)

    @property
    def n_spatial(self) -> int:
        """Number of spatial axes carried per batch pair (0 for fully-connected nets)."""
        return self.cov1.ndim - 1

    def pair_variances(self) -> tuple[Tensor, Tensor]:
        """Variances of x1 and x2, shaped to broadcast against ``nngp``."""
        return self.cov1.unsqueeze(1), self.cov2.unsqueeze(0)

    def __repr__(self) -> str:
        def shape(t):
            return None if t is None else tuple(t.shape)

        return (
            f"Kernel(nngp={shape(self.nngp)}, ntk={shape(self.ntk)}, cov1={shape(self.cov1)}, "
            f"cov2={shape(self.cov2)}, dtype={self.cov1.dtype})"
        )


def input_kernel(
    x1: Tensor,
    x2: Tensor,
    *,
    x1_is_x2: bool = False,
    diagonal_offset: int | None = None,
    compute_ntk: bool = True,
    cov1: Tensor | None = None,
    cov2: Tensor | None = None,
) -> Kernel:
    """Kernel of the raw inputs: nngp = x1 . x2 / C over the channel axis (axis 1).

    Inputs are (N, C) or (N, C, *spatial): spatial positions are kept (one covariance per
    position, as convolutions need), channels are averaged. ``diagonal_offset`` marks that
    ``x1[r]`` and ``x2[r + offset]`` are the same input: those entries are set to the exact
    variance so that the diagonal of a kernel of a set with itself is exact. ``cov1`` and
    ``cov2`` may be passed when already computed (see :func:`input_variances`).
    """
    channels = x1.shape[1]
    if x1.ndim == 2:
        nngp = x1 @ x2.T
        nngp /= channels
    else:
        nngp = torch.einsum("ic...,jc...->ij...", x1, x2) / channels
    if cov1 is None:
        cov1 = input_variances(x1)
    if cov2 is None:
        cov2 = cov1 if x1_is_x2 and x1 is x2 else input_variances(x2)
    if diagonal_offset is not None:
        r = torch.arange(max(0, -diagonal_offset), min(x1.shape[0], x2.shape[0] - diagonal_offset))
        if len(r):
            nngp[r, r + diagonal_offset] = cov1[r]
    ntk = torch.zeros_like(nngp) if compute_ntk else None
    return Kernel(
        nngp=nngp,
        ntk=ntk,
        cov1=cov1,
        cov2=cov2,
        shape1=tuple(x1.shape[1:]),
        shape2=tuple(x2.shape[1:]),
        x1_is_x2=x1_is_x2,
        is_gaussian=False,
        is_input=True,
    )


def input_variances(x: Tensor) -> Tensor:
    """Per-input variances x . x / C over the channel axis, spatial axes kept."""
    return (x * x).sum(1) / x.shape[1]


def slice_pairs(k: Kernel, r0: int, r1: int, c0: int = 0) -> Kernel:
    """The kernel of x1[r0:r1] against x2[c0:] (views, no copy)."""
    return k.replace(
        nngp=k.nngp[r0:r1, c0:],
        ntk=None if k.ntk is None else k.ntk[r0:r1, c0:],
        cov1=k.cov1[r0:r1],
        cov2=k.cov2[c0:],
        x1_is_x2=False,
    )
