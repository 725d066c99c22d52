"""Kernels differentiable in w_std/b_std given as 0-dim tensors; the float path unchanged."""

import pytest
import torch

import widenets as wn
from widenets.kernel import input_kernel

ACTS = [
    wn.Relu(),
    wn.Abs(),
    wn.LeakyRelu(0.1),
    wn.Erf(),
    wn.Gelu(),
    wn.Sin(),
    wn.Elementwise(torch.tanh, degree=16),
    wn.Tanh(),  # the split rule: its break points move with the correlation
    wn.Elementwise(torch.relu, kinks=(0.0,)),
]


def _net(w, b, act):
    return wn.serial(wn.Dense(8, w, b), act, wn.Dense(8, w, b), act, wn.Dense(1, w, b))


@pytest.mark.parametrize("act", ACTS, ids=repr)
def test_gradcheck_through_recursion(act):
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def f(w, b):
        k = _net(w, b, act).kernel_fn(input_kernel(x, x, x1_is_x2=True, diagonal_offset=0))
        return k.nngp, k.ntk

    w = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (w, b))
    # the tensor path gives the same numbers as the float path on the same evaluation
    nngp, ntk = f(w, b)
    ref = _net(1.3, 0.2, act).kernel_fn(input_kernel(x, x, x1_is_x2=True, diagonal_offset=0))
    torch.testing.assert_close(nngp.detach(), ref.nngp, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ntk.detach(), ref.ntk, rtol=1e-12, atol=1e-12)


def test_dense_scales():
    assert isinstance(wn.Dense(3, 1.5, 0.1).w_std, float)
    t = torch.tensor(2.0)
    assert wn.Dense(3, t).w_std is t
    with pytest.raises(ValueError, match="`w_std`"):
        wn.Dense(3, torch.tensor(-1.0))
    with pytest.raises(ValueError, match="`b_std`"):
        wn.Dense(3, 1.0, torch.tensor(float("nan")))
