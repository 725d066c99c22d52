"""Monte-Carlo helpers shared by the spatial-layer tests (no expected values from the code
under test: the reference is the average over finite networks built by ``net.build``)."""

import torch

import widenets as wn

#: an estimate must fall within this many standard errors, plus a finite-width bias
#: allowance of BIAS / width relative to the kernel's scale (the bias is O(1/width))
Z = 4.5
BIAS = 2.0


def images(n=3, c=2, spatial=(5,), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, *spatial, generator=g, dtype=torch.float64)


def mc_errors(net, x, get, widths, n_samples, method="auto"):
    """For each width: (max |MC - analytic| relative to the kernel's scale, whether every
    entry is within the allowed error, the errors, the allowed errors). The analytic kernel
    is that of the re-widthed network (the standard parameterisation's NTK depends on the
    finite widths)."""
    out = []
    for w in widths:
        exact = getattr(net.with_widths(w).kernel(x, get=get), get)
        mc = wn.empirical.monte_carlo(
            net, x, n_samples=n_samples, width=w, get=get, method=method, seed=w
        )
        mean, se = getattr(mc, get), getattr(mc, get + "_se")
        err = (mean - exact).abs()
        allowed = Z * se + BIAS / w * exact.abs().max()
        scale = exact.abs().max().item()
        out.append((err.max().item() / scale, bool((err <= allowed).all()), err, allowed))
    return out


def assert_converges(net, x, get="nngp", widths=(4, 48), n_samples=24, method="auto"):
    """Within Z standard errors (+ O(1/width) bias) at the largest width, and the error
    at the largest width smaller than at the smallest."""
    (e_small, _, _, _), (e_large, ok, err, allowed) = mc_errors(
        net, x, get, widths, n_samples, method
    )
    assert ok, f"{get}: |MC - analytic| {err} exceeds {allowed}"
    assert e_large < e_small, f"{get}: error did not shrink with width ({e_small} -> {e_large})"
