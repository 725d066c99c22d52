"""Target densities: checking them, and per-layer kept counts (uniform, global, ERK).

Erdos-Renyi-Kernel (Evci et al. 2020, "Rigging the lottery"; Liu et al. 2022): a layer of
weight shape (out, in, *kernel) gets density eps * sum(shape) / prod(shape), eps chosen so
that the kept weights total the global density D; layers that would exceed density 1 are
kept dense and eps is recomputed over the others.
"""

from __future__ import annotations

import math

from widenets.errors import check_finite_real


def check_density(density, name: str = "density") -> float:
    """A float in (0, 1], or a one-line ValueError naming ``name``."""
    d = check_finite_real(density, name)
    if not 0 < d <= 1:
        raise ValueError(f"`{name}` must be in (0, 1] (the fraction of weights kept), got {d!r}.")
    return d


def erk_densities(shapes: dict, density: float) -> dict[str, float]:
    """Per-layer ERK densities (name -> density in [0, 1]) for weight ``shapes``
    (name -> shape), with sum_l d_l * N_l = density * sum_l N_l."""
    density = check_density(density)
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: sum(s) / sizes[n] for n, s in shapes.items()}
    total = sum(sizes.values())
    dense: set[str] = set()
    while True:
        budget = density * total - sum(sizes[n] for n in dense)
        rest = [n for n in shapes if n not in dense]
        eps = budget / sum(raw[n] * sizes[n] for n in rest)
        over = [n for n in rest if eps * raw[n] > 1]
        if not over:
            break
        dense.update(over)
    return {n: 1.0 if n in dense else eps * raw[n] for n in shapes}


def counts_from_densities(sizes: dict, densities: dict) -> dict[str, int]:
    """Integer kept counts per layer with the total equal to round(sum d_l N_l) exactly:
    floor(d_l N_l) each, the remainder given to the largest fractional parts."""
    exact = {n: densities[n] * sizes[n] for n in sizes}
    counts = {n: min(sizes[n], math.floor(exact[n] + 1e-9)) for n in sizes}
    left = round(sum(exact.values())) - sum(counts.values())
    order = sorted(sizes, key=lambda n: exact[n] - counts[n], reverse=True)
    for n in order:
        if left <= 0:
            break
        if counts[n] < sizes[n]:
            counts[n] += 1
            left -= 1
    return counts
