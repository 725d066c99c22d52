"""The finite face: modules with the declared widths, seeded, parameterised as declared."""

import torch

import widenets as wn


def test_build_widths_seed_and_forward():
    net = wn.serial(
        wn.Dense(512, w_std=1.5, b_std=0.05),
        wn.Relu(),
        wn.Dense(256, w_std=1.5, b_std=0.05),
        wn.Relu(),
        wn.Dense(1, w_std=1.5, b_std=0.05),
    )
    m = net.build((784,), seed=0)
    assert isinstance(m, torch.nn.Module)
    shapes = [tuple(p.shape) for p in m.parameters()]
    assert shapes == [(512, 784), (512,), (256, 512), (256,), (1, 256), (1,)]
    assert m(torch.randn(3, 784)).shape == (3, 1)
    m2 = net.build((784,), seed=0)
    assert all(torch.equal(a, b) for a, b in zip(m.parameters(), m2.parameters(), strict=True))
    m3 = net.build((784,), seed=1)
    assert not torch.equal(next(m.parameters()), next(m3.parameters()))


def test_ntk_parameterisation_draws_unit_weights_and_scales_forward():
    net = wn.serial(wn.Dense(2000, w_std=1.5, b_std=0.3))
    m = net.build((400,), seed=0, dtype=torch.float64)
    w = m[0].weight
    assert abs(w.std().item() - 1.0) < 0.01  # N(0, 1) weights
    x = torch.randn(5, 400, dtype=torch.float64)
    expected = 1.5 / 400**0.5 * x @ w.T + 0.3 * m[0].bias
    torch.testing.assert_close(m(x), expected)


def test_standard_parameterisation_draws_scaled_weights():
    net = wn.serial(wn.Dense(2000, w_std=1.5, b_std=0.3, parameterization="standard"))
    m = net.build((400,), seed=0, dtype=torch.float64)
    assert abs(m[0].weight.std().item() - 1.5 / 400**0.5) < 0.01 * 1.5 / 20
    assert abs(m[0].bias.std().item() - 0.3) < 0.03
    x = torch.randn(5, 400, dtype=torch.float64)
    torch.testing.assert_close(m(x), x @ m[0].weight.T + m[0].bias)


def test_branching_network_builds_and_runs():
    net = wn.serial(
        wn.Dense(8),
        wn.residual(wn.Relu(), wn.Dense(8)),
        wn.fan_out(2),
        wn.parallel(wn.Dense(3), wn.Dense(5)),
        wn.fan_in_concat(),
        wn.Dense(2),
    )
    m = net.build((4,), seed=0)
    assert m(torch.randn(6, 4)).shape == (6, 2)
