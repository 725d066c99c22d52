"""wn.init.apply and wn.prune.reinit on pruned models: the trainable original is redrawn,
the mask and its scale are kept (the bug: apply wrote to the computed weight, a temporary,
and left a pruned nn.Linear unchanged)."""

import pytest
import torch
from torch import nn

import widenets as wn
from widenets import init
from widenets import prune as P

D = torch.float64
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _torch_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).to(D)


def _widenets_mlp():
    net = wn.serial(
        wn.Dense(8, w_std=1.4, b_std=0.1, parameterization="standard"),
        wn.Relu(),
        wn.Dense(3, b_std=0.1, parameterization="standard"),
    )
    return net, net.build((6,), seed=0, dtype=D)


def _orig(m):
    return m.parametrizations.weight.original


def test_apply_redraws_the_original_of_a_pruned_linear_and_keeps_the_mask():
    model = _torch_mlp()
    P.prune(model, "random", 0.5, scope="layer", seed=3, rescale=True)
    masks = {n: m.clone() for n, m in P.masks(model).items()}
    before = _orig(model[0]).detach().clone()
    init.apply(model, init.Gaussian(), w_std=2.0, b_std=0.5, seed=7)
    # the same draw on an unpruned copy of the architecture (apply draws in module order)
    ref = _torch_mlp()
    init.apply(ref, init.Gaussian(), w_std=2.0, b_std=0.5, seed=7)
    assert not torch.equal(_orig(model[0]), before)
    for name, i in (("0", 0), ("2", 2)):
        torch.testing.assert_close(_orig(model[i]), ref[i].weight, rtol=0, atol=0)
        torch.testing.assert_close(model[i].bias, ref[i].bias, rtol=0, atol=0)
        assert torch.equal(P.masks(model)[name], masks[name])
        scale = 2**0.5  # layer density 1/2, rescaled by 1/sqrt(1/2)
        torch.testing.assert_close(model[i].weight, ref[i].weight * masks[name] * scale)


def test_apply_redraws_a_pruned_widenets_dense_as_build_draws_it():
    net, model = _widenets_mlp()
    P.prune(model, "magnitude", 0.3, scope="layer")
    masks = {n: m.clone() for n, m in P.masks(model).items()}
    init.apply(model, init.Orthogonal(), seed=11)
    ref = net.build((6,), seed=11, dtype=D, init=init.Orthogonal())
    for name, m in P.prunable(model).items():
        r = dict(ref.named_modules())[name]
        torch.testing.assert_close(_orig(m), r.weight, rtol=0, atol=0)
        torch.testing.assert_close(m.weight, r.weight * masks[name], rtol=0, atol=0)
        assert torch.equal(P.masks(model)[name], masks[name])


def test_apply_leaves_the_model_parametrised_and_trainable():
    model = _torch_mlp()
    P.prune(model, "random", 0.4, seed=0)
    init.apply(model, None, seed=1)
    names = {n for n, _ in model.named_parameters()}
    assert "0.parametrizations.weight.original" in names and "0.weight" not in names
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(4, 6, dtype=D)).square().sum().backward()
    opt.step()
    assert (model[0].weight[~P.masks(model)["0"]] == 0).all()


def test_apply_refuses_other_parametrisations():
    lin = nn.utils.parametrizations.orthogonal(nn.Linear(4, 4).to(D))
    with pytest.raises(ValueError, match=r"`model`.*parametrised by"):
        init.apply(nn.Sequential(lin), None, seed=0)
    assert type(lin).__name__.startswith("Parametrized")  # left as it was


def test_reinit_keeps_masks_and_changes_kept_weights():
    net, model = _widenets_mlp()
    P.prune(model, "magnitude", 0.25, scope="layer")
    masks = {n: m.clone() for n, m in P.masks(model).items()}
    kept_before = {n: m.weight[masks[n]].clone() for n, m in P.prunable(model).items()}
    out = P.reinit(model, seed=5)
    assert out is model
    ref = net.build((6,), seed=5, dtype=D)
    for name, m in P.prunable(model).items():
        assert torch.equal(P.masks(model)[name], masks[name])
        assert not torch.equal(m.weight[masks[name]], kept_before[name])
        r = dict(ref.named_modules())[name]
        torch.testing.assert_close(m.weight, r.weight * masks[name], rtol=0, atol=0)
        assert (m.weight[~masks[name]] == 0).all()
    assert P.density(model) == pytest.approx(0.25, abs=1 / 74)


def test_reinit_without_prunable_weights_is_an_error():
    with pytest.raises(ValueError, match="no prunable weights"):
        P.reinit(nn.Sequential(nn.ReLU()))
