"""Monte-Carlo estimates of a network's kernels from finite networks built by ``build``.

Each sample is a freshly initialised finite network; its empirical NNGP f(x1) f(x2)^T / O
and NTK are averaged over samples, and the standard error of the mean is reported, so an
analytic kernel can be checked to lie within a stated number of standard errors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from widenets.empirical.ntk import nngp as empirical_nngp
from widenets.empirical.ntk import ntk as empirical_ntk
from widenets.errors import as_tensor, check_get, check_positive_int


@dataclass(frozen=True)
class MonteCarloKernel:
    """Sample means of empirical kernels and their standard errors."""

    nngp: Tensor | None
    ntk: Tensor | None
    nngp_se: Tensor | None
    ntk_se: Tensor | None
    n_samples: int


class _Moments:
    def __init__(self):
        self.n, self.mean, self.m2 = 0, None, None

    def add(self, x: Tensor):
        self.n += 1
        if self.mean is None:
            self.mean, self.m2 = x.clone(), torch.zeros_like(x)
            return
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    def se(self):
        if self.n < 2:
            return torch.full_like(self.mean, float("nan"))
        return (self.m2 / (self.n - 1) / self.n).sqrt()


def monte_carlo(
    net,
    x1,
    x2=None,
    n_samples: int = 64,
    seed: int = 0,
    *,
    width: int | None = None,
    get=("nngp", "ntk"),
    dtype: torch.dtype = torch.float64,
    method: str = "auto",
    init=None,
) -> MonteCarloKernel:
    """Average empirical NNGP and NTK over ``n_samples`` networks ``net.build(...)``.

    Args:
        net: a widenets network (anything with ``build`` and ``with_widths``).
        x1, x2: inputs (x2 None: x1 with itself).
        n_samples: number of independently initialised networks.
        seed: sample s uses seed ``seed * 1_000_003 + s``.
        width: if given, every hidden width is set to it (the readout keeps its width).
        get: which kernels to estimate.
        method: empirical NTK method (see :func:`widenets.empirical.ntk`).
        init: weight initialiser passed to ``build``.
    """
    names = check_get(get)
    n_samples = check_positive_int(n_samples, "n_samples")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer, got {seed!r}.")
    if width is not None:
        net = net.with_widths(width)
    x1 = as_tensor(x1, "x1", dtype)
    x2 = None if x2 is None else as_tensor(x2, "x2", dtype)
    in_shape = tuple(x1.shape[1:])
    moments = {name: _Moments() for name in names}
    for s in range(n_samples):
        model = net.build(in_shape, seed=seed * 1_000_003 + s, dtype=dtype, init=init)
        if "nngp" in names:
            moments["nngp"].add(empirical_nngp(model, x1, x2))
        if "ntk" in names:
            moments["ntk"].add(empirical_ntk(model, x1, x2, method=method).detach())
    out = {}
    for name in ("nngp", "ntk"):
        m = moments.get(name)
        out[name] = None if m is None else m.mean
        out[name + "_se"] = None if m is None else m.se()
    return MonteCarloKernel(n_samples=n_samples, **out)
