"""Monte Carlo of finite networks whose inputs need more than a tensor (graphs, sequences of
different lengths): NNGP as the mean of f(x_i) f(x_j) over networks, NTK as the mean of
J(x_i) . J(x_j) by autograd; with standard errors over networks."""

import torch


def mc_kernels(make_model, run, n_inputs, n_samples):
    """(nngp mean, nngp s.e., ntk mean, ntk s.e.), each (n_inputs, n_inputs).

    ``make_model(s)``: the s-th network; ``run(model)``: its (n_inputs,) scalar outputs."""
    nngps, ntks = [], []
    for s in range(n_samples):
        model = make_model(s)
        params = [p for p in model.parameters() if p.requires_grad]
        out = run(model)
        jac = []
        for i in range(n_inputs):
            g = torch.autograd.grad(out[i], params, retain_graph=True, allow_unused=True)
            flat = [
                torch.zeros(p.numel(), dtype=out.dtype) if gi is None else gi.flatten()
                for gi, p in zip(g, params, strict=True)
            ]
            jac.append(torch.cat(flat))
        j = torch.stack(jac)
        f = out.detach()
        nngps.append(f[:, None] * f[None, :])
        ntks.append(j @ j.T)
    res = []
    for ks in (nngps, ntks):
        ks = torch.stack(ks)
        res += [ks.mean(0), ks.std(0) / n_samples**0.5]
    return tuple(res)
