"""Power laws fitted to scaling curves: error ~ a N^-b by least squares in log-log.

log y = log a - b log N, ordinary least squares over the k points with y > 0. The standard
error of b is the usual one of a regression slope, sqrt(s^2 / S_xx) with
s^2 = RSS / (k - 2) and S_xx = sum (log N - mean log N)^2, and the 95% interval is
b +- t_{0.975, k-2} s.e. (Student's t): it assumes independent, equal-variance scatter of
log y about the line, which a curving scaling law does not satisfy, so it is a measure of
the fit, not a guarantee.
"""

from __future__ import annotations

import math


def fit_power_law(ns, ys) -> dict | None:
    """Fit y = a N^-b to the points with finite y > 0 and N > 0.

    Returns a dict with ``a``, ``b`` (the exponent, positive for a falling curve),
    ``b_se`` and ``b_ci95`` (None with fewer than 3 points), ``points`` (how many were
    used) and ``dropped`` (how many were not: y <= 0 or not finite); None with fewer than
    2 usable points or a single distinct N.
    """
    pts = [
        (float(n), float(y))
        for n, y in zip(ns, ys, strict=True)
        if y is not None and n > 0 and math.isfinite(y) and y > 0
    ]
    k = len(pts)
    if k < 2:
        return None
    lx = [math.log(n) for n, _ in pts]
    ly = [math.log(y) for _, y in pts]
    mx, my = sum(lx) / k, sum(ly) / k
    sxx = sum((x - mx) ** 2 for x in lx)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in zip(lx, ly, strict=True)) / sxx
    intercept = my - slope * mx
    se = ci = None
    if k > 2:
        rss = sum((y - intercept - slope * x) ** 2 for x, y in zip(lx, ly, strict=True))
        se = math.sqrt(rss / (k - 2) / sxx)
        from scipy.stats import t

        half = float(t.ppf(0.975, k - 2)) * se
        ci = [-slope - half, -slope + half]
    return {
        "a": math.exp(intercept),
        "b": -slope,
        "b_se": se,
        "b_ci95": ci,
        "points": k,
        "dropped": len(ns) - k,
    }


def describe(fit: dict | None) -> str:
    """``b = 0.41 ± 0.03 (s.e.; 95% CI 0.31 to 0.51; 5 points)`` or why there is none."""
    if fit is None:
        return "no fit (fewer than 2 points with a positive value)"
    if fit["b_se"] is None:
        return f"b = {fit['b']:.3f} (2 points: no uncertainty)"
    lo, hi = fit["b_ci95"]
    return (
        f"b = {fit['b']:.3f} ± {fit['b_se']:.3f} (s.e.; 95% CI {lo:.3f} to {hi:.3f}; "
        f"{fit['points']} points)"
    )
