"""wn.init.apply on widenets' own modules: every weight redrawn, as ``build`` draws it, and
the redrawn networks still have the analytic kernels (Monte Carlo)."""

import math

import pytest
import torch

import widenets as wn
from widenets import init

A = wn.architectures


def test_apply_redraws_conv_weights():
    # the bug: apply knew nn.Linear, nn.Conv* and the Dense module only, so the weight of a
    # widenets Conv was left bit-identical
    net = wn.serial(wn.Conv(8, 3), wn.Relu(), wn.Flatten(), wn.Dense(2))
    model = net.build((2, 6), seed=0, dtype=torch.float64)
    before = model[0].weight.detach().clone()
    init.apply(model, init.Orthogonal(), seed=1)
    w = model[0].weight.detach().reshape(8, 6)  # the (out, fan_in) matrix, out > fan_in
    assert not torch.equal(w.reshape(before.shape), before)
    # an orthogonal draw of unit entry variance: W^T W = 8 I (columns orthonormal times sqrt 8)
    torch.testing.assert_close(w.T @ w, 8 * torch.eye(6, dtype=w.dtype), atol=1e-12, rtol=0)


#: (name, network, per-example input shape): every architecture and every layer with weights
NETWORKS = [
    ("fully_connected", A.fully_connected(2, 8, 2, b_std=0.1), (5,)),
    ("fc_standard", A.fully_connected(2, 8, 2, b_std=0.1, parameterization="standard"), (5,)),
    ("fc_mean_field", A.fully_connected(1, 8, 2, b_std=0.1, parameterization="mup"), (5,)),
    ("cnn_vec", A.cnn_vec(2, 4, 2, b_std=0.1), (2, 6)),
    ("cnn_vec_standard", A.cnn_vec(1, 4, 2, b_std=0.1, parameterization="standard"), (2, 6)),
    ("cnn_gap", A.cnn_gap(1, 4, 2, b_std=0.1), (2, 4, 4)),
    ("myrtle", A.myrtle(5, 4, 2, b_std=0.1), (3, 8, 8)),
    ("wide_resnet", A.wide_resnet(1, 1, 2, 4, 2, b_std=0.1), (3, 4, 4)),
    (
        "attention",
        wn.serial(wn.Conv(6, 3), wn.GlobalSelfAttention(6, 4, 4, 2, b_std=0.2), wn.Flatten()),
        (2, 4),
    ),
    ("attention_sqrt", wn.GlobalSelfAttention(6, 4, 4, 2, linear_scaling=False), (2, 4)),
    ("deq", wn.serial(wn.DEQ(8, wn.Erf(), 0.5, 1.0, 0.1), wn.Dense(2)), (5,)),
    ("scaled", wn.scaled(A.fully_connected(1, 8, 2, b_std=0.1), 2.0), (5,)),
]


@pytest.mark.parametrize("scheme", [init.Gaussian(), init.Orthogonal()], ids=repr)
@pytest.mark.parametrize("name,net,shape", NETWORKS, ids=[n for n, _, _ in NETWORKS])
def test_apply_redraws_every_weight_as_build_draws_it(name, net, shape, scheme):
    model = net.build(shape, seed=5, dtype=torch.float64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    init.apply(model, scheme, seed=11)
    after = model.state_dict()
    ref = net.build(shape, seed=11, dtype=torch.float64, init=scheme).state_dict()
    assert after.keys() == ref.keys()
    for k, v in after.items():
        if not k.startswith("reference."):
            assert not torch.equal(v, before[k]), f"{k} unchanged by apply"
        assert torch.equal(v, ref[k]), f"{k}: apply(seed=s) differs from build(seed=s)"
    if name == "scaled":  # the frozen reference follows: the centred output stays zero
        x = torch.randn(3, *shape, dtype=torch.float64)
        assert float(model(x).detach().abs().max()) == 0.0


#: redrawn networks whose empirical kernels are checked against the analytic ones
MC_NETWORKS = [
    ("fc_standard", wn.serial(wn.Dense(64, 1.2, 0.2, "standard"), wn.Relu(), wn.Dense(1))),
    ("conv_standard", wn.serial(wn.Conv(48, 3, parameterization="standard", b_std=0.1),
                                wn.Relu(), wn.Flatten(), wn.Dense(1))),
    ("cnn_gap", A.cnn_gap(1, 48, 1, b_std=0.1)),
    pytest.param("attention", wn.serial(
        wn.Conv(32, 3), wn.GlobalSelfAttention(32, 32, 32, 4, b_std=0.1), wn.Flatten(), wn.Dense(1)
    ), marks=pytest.mark.slow),
    pytest.param("deq", wn.serial(wn.DEQ(64, wn.Erf(), 0.6, 1.0, 0.1), wn.Dense(1)),
                 marks=pytest.mark.slow),
]  # fmt: skip
Z = 4.5  # standard errors allowed, plus a BIAS / width allowance (as tests/_mc.py)
BIAS = 2.0


@pytest.mark.parametrize("name,net", MC_NETWORKS)
def test_redrawn_networks_have_the_analytic_kernels(name, net):
    # orthogonal (pseudo-IID, Nait Saada et al. 2024) for affine layers; Gaussian elsewhere.
    # (attention and DEQ are slow: their build-made networks are checked against Monte Carlo
    # in tests/test_spatial_layers.py and tests/test_deq.py, and apply equals build above)
    scheme = init.Orthogonal() if name in ("fc_standard", "conv_standard") else init.Gaussian()
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    if name in ("conv_standard", "cnn_gap", "attention"):
        x = x.reshape(3, 1, 5)
    exact = net.kernel(x)
    model = net.build(tuple(x.shape[1:]), seed=0, dtype=torch.float64)
    samples = {"nngp": [], "ntk": []}
    n = 16
    for s in range(n):
        init.apply(model, scheme, seed=1000 + s)
        samples["nngp"].append(wn.empirical.nngp(model, x))
        method = "auto" if name == "deq" else "jacobian"  # DEQ has no torch.func support
        samples["ntk"].append(wn.empirical.ntk(model, x, method=method).detach())
    width = 64 if name in ("fc_standard", "deq") else 48 if name != "attention" else 32
    for get in ("nngp", "ntk"):
        stack = torch.stack(samples[get])
        mean, se = stack.mean(0), stack.std(0) / math.sqrt(n)
        ref = getattr(exact, get)
        allowed = Z * se + BIAS / width * ref.abs().max()
        assert bool(((mean - ref).abs() <= allowed).all()), (get, mean - ref, allowed)
