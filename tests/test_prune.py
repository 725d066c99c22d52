"""widenets.prune: scores against independent computations, exact mask counts, masks
that survive optimisers, iterative magnitude pruning with rewinding, errors."""

import math
import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call

import widenets as wn
from widenets import prune as P

D = torch.float64
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _mlp(seed=0, bias=True):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4, bias=bias), nn.Tanh(), nn.Linear(4, 2, bias=bias)).to(D)


def _data(n=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=D), torch.randn(n, 2, generator=g, dtype=D)


def _loss(model, params, x, y):
    return ((functional_call(model, params, (x,)) - y) ** 2).mean()


# ----- scores ---------------------------------------------------------------------------


def test_snip_is_abs_grad_times_weight_by_finite_differences():
    m = _mlp()
    x, y = _data()
    s = P.scores(m, "snip", data=(x, y))
    base = dict(m.named_parameters())
    h = 1e-6
    for layer, name in (("0", "0.weight"), ("2", "2.weight")):
        w = base[name].detach()
        fd = torch.zeros_like(w)
        for idx in torch.cartesian_prod(*[torch.arange(k) for k in w.shape]):
            i = tuple(idx.tolist())
            e = torch.zeros_like(w)
            e[i] = h
            up = _loss(m, {**base, name: w + e}, x, y)
            dn = _loss(m, {**base, name: w - e}, x, y)
            fd[i] = (up - dn) / (2 * h)
        torch.testing.assert_close(s[layer], (fd * w).abs(), rtol=1e-6, atol=1e-10)


def test_snip_sums_gradients_over_batches():
    m = _mlp()
    x, y = _data(6)
    whole = P.scores(m, "snip", data=[(x[:3], y[:3]), (x[3:], y[3:])])
    g = [0, 0]
    for xb, yb in ((x[:3], y[:3]), (x[3:], y[3:])):
        gs = torch.autograd.grad(((m(xb) - yb) ** 2).mean(), [m[0].weight, m[2].weight])
        g = [a + b for a, b in zip(g, gs, strict=True)]
    torch.testing.assert_close(whole["0"], (g[0] * m[0].weight).abs().detach())
    torch.testing.assert_close(whole["2"], (g[1] * m[2].weight).abs().detach())


@pytest.mark.parametrize(
    ("temperature", "targets"), [(None, "classes"), (1.0, "classes"), (1.0, "real"), (7.0, "real")]
)
def test_grasp_is_weight_times_hessian_gradient_by_explicit_hessian(temperature, targets):
    # importance w (H g) = -S (Wang et al. 2020), H and g of loss(f(x) / T, y); T defaults
    # to 200 (the authors' code); cross-entropy for class targets, MSE for real ones
    m = _mlp()
    x, y = _data()
    if targets == "classes":
        y = torch.tensor([0, 1, 1, 0, 1])
    kw = {} if temperature is None else {"temperature": temperature}
    t = 200.0 if temperature is None else temperature
    s = P.scores(m, "grasp", data=(x, y), **kw)
    w1, w2 = m[0].weight.detach(), m[2].weight.detach()
    n1 = w1.numel()
    others = {k: v.detach() for k, v in m.named_parameters() if not k.endswith("weight")}

    def f(flat):
        p = {
            **others,
            "0.weight": flat[:n1].reshape(w1.shape),
            "2.weight": flat[n1:].reshape(w2.shape),
        }
        out = functional_call(m, p, (x,)) / t
        if targets == "classes":
            return torch.nn.functional.cross_entropy(out, y)
        return ((out - y) ** 2).mean()

    flat = torch.cat([w1.reshape(-1), w2.reshape(-1)])
    hess = torch.autograd.functional.hessian(f, flat)
    grad = torch.autograd.functional.jacobian(f, flat)
    imp = flat * (hess @ grad)  # = -S, S = -w (H g) the paper's score
    scale = float(imp.abs().max())
    assert scale > 0
    torch.testing.assert_close(s["0"], imp[:n1].reshape(w1.shape), rtol=1e-9, atol=1e-12 * scale)
    torch.testing.assert_close(s["2"], imp[n1:].reshape(w2.shape), rtol=1e-9, atol=1e-12 * scale)


def test_grasp_temperature_changes_the_ranking():
    # T = 200 is not a rescaling of the T = 1 scores: the kept sets differ
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(10, 50), nn.ReLU(), nn.Linear(50, 50), nn.ReLU(), nn.Linear(50, 5))
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(64, 10, generator=g), torch.randint(0, 5, (64,), generator=g))
    hot = P.masks_from_scores(P.scores(m, "grasp", data=data, temperature=1.0), 0.1)
    cold = P.masks_from_scores(P.scores(m, "grasp", data=data), 0.1)
    assert any(not torch.equal(hot[n], cold[n]) for n in hot)


def test_synflow_closed_form_two_layer():
    # R = 1^T |W2| relu(|W1| 1) = 1^T |W2| |W1| 1 (all positive):
    # dR/dW1_ij W1_ij = (sum_k |W2_ki|) |W1_ij|, dR/dW2_ki W2_ki = |W2_ki| sum_j |W1_ij|
    torch.manual_seed(3)
    m = nn.Sequential(nn.Linear(5, 4, bias=False), nn.ReLU(), nn.Linear(4, 3, bias=False))
    s = P.scores(m, "synflow", input_shape=(5,))
    a1, a2 = m[0].weight.detach().double().abs(), m[2].weight.detach().double().abs()
    assert s["0"].dtype == torch.float64
    torch.testing.assert_close(s["0"], a2.sum(0)[:, None] * a1, rtol=1e-12, atol=0)
    torch.testing.assert_close(s["2"], a2 * a1.sum(1)[None, :], rtol=1e-12, atol=0)
    # the model itself is unchanged (signs, dtype)
    assert m[0].weight.dtype == torch.float32 and (m[0].weight < 0).any()


def test_magnitude_and_random_scores():
    m = _mlp()
    s = P.scores(m, "magnitude")
    torch.testing.assert_close(s["0"], m[0].weight.detach().abs())
    r1 = P.scores(m, "random", generator=torch.Generator().manual_seed(0))
    r2 = P.scores(m, "random", generator=torch.Generator().manual_seed(0))
    assert torch.equal(r1["2"], r2["2"]) and 0 <= float(r1["2"].min()) < float(r1["2"].max()) < 1


@pytest.mark.filterwarnings("ignore::widenets.prune.LayerCollapseWarning")  # the unmatched
def test_synflow_avoids_layer_collapse_where_magnitude_and_snip_collapse():
    # Tanaka et al. 2020: iterative SynFlow keeps every layer connected at extreme sparsity
    # (here 22 of 11,200 weights), where single-shot magnitude and SNIP empty a layer.
    def net():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Linear(10, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 2)
        )

    g = torch.Generator().manual_seed(0)
    data = (torch.randn(64, 10, generator=g), torch.randint(0, 2, (64,), generator=g))
    with pytest.warns(P.LayerCollapseWarning, match="layer '2'"):
        P.prune(net(), "magnitude", 0.002)
    with pytest.warns(P.LayerCollapseWarning, match="layer '2'"):
        P.prune(net(), "snip", 0.002, data=data)
    with warnings.catch_warnings():
        warnings.simplefilter("error", P.LayerCollapseWarning)
        ms = P.prune(net(), "synflow", 0.002, input_shape=(10,))
    assert all(int(v.sum()) > 0 for v in ms.values())
    assert sum(int(v.sum()) for v in ms.values()) == round(0.002 * 11200)


# ----- masks and densities --------------------------------------------------------------


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 10),
        nn.LayerNorm(10),
        nn.Linear(10, 3),
    ).to(D)


def test_prunable_are_weights_of_linear_and_conv_only():
    assert list(P.prunable(_cnn())) == ["0", "4", "6"]
    net = wn.serial(wn.Conv(4, (3,)), wn.Relu(), wn.Flatten(), wn.Dense(2))
    model = net.build((2, 7), seed=0)
    names = list(P.prunable(model))
    assert len(names) == 2 and all(hasattr(model.get_submodule(n), "weight") for n in names)


@pytest.mark.parametrize("scope", ["global", "layer", "erk"])
@pytest.mark.parametrize("d", [1.0, 0.37, 0.05, 0.005])
@pytest.mark.filterwarnings("ignore::widenets.prune.LayerCollapseWarning")
def test_masks_have_the_requested_count(scope, d):
    m = _cnn()
    ms = P.prune(m, "magnitude", d, scope=scope)
    sizes = {n: v.numel() for n, v in ms.items()}
    kept = {n: int(v.sum()) for n, v in ms.items()}
    n_total = sum(sizes.values())
    if scope == "layer":
        assert kept == {n: round(d * s) for n, s in sizes.items()}
    else:
        assert sum(kept.values()) == round(d * n_total)
    assert P.density(m) == sum(kept.values()) / n_total
    for name, mod in P.prunable(m).items():  # the module's weight is zero exactly off the mask
        assert torch.equal(mod.weight != 0, ms[name] & (P.targets.original(mod) != 0))


def test_global_magnitude_keeps_the_largest():
    m = _cnn()
    ms = P.prune(m, "magnitude", 0.2)
    w = {n: P.targets.original(mod).detach().abs() for n, mod in P.prunable(m).items()}
    kept = torch.cat([w[n][ms[n]] for n in ms])
    dropped = torch.cat([w[n][~ms[n]] for n in ms])
    assert float(kept.min()) >= float(dropped.max())


def test_erk_densities_sum_to_target_and_follow_the_rule():
    shapes = {"a": (100, 3, 3, 3), "b": (200, 100), "c": (10, 200), "d": (2, 2)}
    n = {k: math.prod(s) for k, s in shapes.items()}
    for target in (0.01, 0.1, 0.5, 0.9):
        d = P.erk_densities(shapes, target)
        assert sum(d[k] * n[k] for k in shapes) == pytest.approx(target * sum(n.values()), 1e-12)
        assert all(0 < v <= 1 for v in d.values())
        free = [k for k in shapes if d[k] < 1]
        ratios = [d[k] / (sum(shapes[k]) / n[k]) for k in free]  # the same eps for all
        assert max(ratios) == pytest.approx(min(ratios), rel=1e-12)
    assert P.erk_densities(shapes, 0.5)["d"] == 1.0  # the tiny layer is kept dense


def test_pruning_again_only_removes_and_cannot_revive():
    m = _mlp()
    first = P.prune(m, "magnitude", 0.5)
    second = P.prune(m, "random", 0.25, seed=0)
    for n in first:
        assert not (second[n] & ~first[n]).any()
    with pytest.raises(ValueError, match="density.*left unpruned"):
        P.prune(m, "magnitude", 0.5)


def test_rescale_scales_kept_weights_by_inverse_sqrt_density():
    m = _mlp()
    w0 = m[2].weight.detach().clone()
    ms = P.prune(m, "random", 0.5, scope="layer", rescale=True, seed=1)
    p = float(ms["2"].double().mean())
    torch.testing.assert_close(m[2].weight.detach(), w0 * ms["2"] / math.sqrt(p))


@pytest.mark.parametrize("opt", ["sgd_momentum", "adam_wd"])
def test_masked_weights_stay_zero_under_optimisers(opt):
    m = _cnn()
    ms = P.prune(m, "random", 0.3, seed=0)
    before = {n: mod.weight.detach().clone() for n, mod in P.prunable(m).items()}
    if opt == "sgd_momentum":
        o = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    else:
        o = torch.optim.Adam(m.parameters(), lr=1e-2, weight_decay=1e-1)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.randn(8, 2, 6, 6, generator=g, dtype=D)
        y = torch.randint(0, 3, (8,), generator=g)
        o.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        o.step()
    for n, mod in P.prunable(m).items():
        w = mod.weight.detach()
        assert float(w[~ms[n]].abs().max()) == 0.0
        assert not torch.equal(w[ms[n]], before[n][ms[n]])  # the kept ones trained


def test_remove_makes_masks_permanent():
    m = _mlp()
    P.prune(m, "random", 0.5, rescale=True, seed=0)
    w = m[0].weight.detach().clone()
    P.remove(m)
    assert isinstance(m[0].weight, nn.Parameter) and torch.equal(m[0].weight.detach(), w)
    assert "0.weight" in dict(m.named_parameters())


def test_iterative_pruning_leaves_deep_copies_working():
    # a deep copy shares the parametrised class; scoring must not break the original
    m = _mlp()
    P.prune(m, "magnitude", 0.8)
    P.prune(m, "synflow", 0.3, input_shape=(3,), iterations=5)
    x, y = _data()
    P.prune(m, "snip", 0.2, data=(x, y))
    assert m(x).shape == (5, 2) and P.density(m) == pytest.approx(0.2, abs=1 / 20)


# ----- errors ---------------------------------------------------------------------------


def test_bad_inputs_give_one_line_errors():
    m = _mlp()
    x, y = _data()
    for d in (0, -0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"`density`"):
            P.prune(m, "random", d)
    for bad in (nn.ReLU(), nn.Sequential(nn.LayerNorm(3), nn.Tanh())):
        with pytest.raises(ValueError, match="no prunable weights"):
            P.prune(bad, "random", 0.5)
    for method in ("snip", "grasp"):
        with pytest.raises(ValueError, match=f"`data`: method '{method}' needs data"):
            P.prune(m, method, 0.5)
    for t in (0, -1.0, float("inf"), "hot"):
        with pytest.raises(ValueError, match="`temperature`"):
            P.prune(m, "grasp", 0.5, data=(x, y), temperature=t)
    with pytest.raises(ValueError, match="`method`"):
        P.prune(m, "hessian", 0.5)
    with pytest.raises(ValueError, match="`scope`"):
        P.prune(m, "random", 0.5, scope="row")
    with pytest.raises(ValueError, match="`input_shape`"):
        P.prune(m, "synflow", 0.5)
    with pytest.raises(ValueError, match="`layers`"):
        P.prune(m, "random", 0.5, layers=["1"])
    with pytest.raises(ValueError, match="`data`"):
        P.prune(m, "snip", 0.5, data=[x])
    with pytest.raises(ValueError, match="not finite"):
        P.prune(m, "snip", 0.5, data=(x * float("nan"), y))


def test_layer_collapse_warning_names_the_layer():
    m = _mlp()  # layer '2' has 8 weights: round(0.05 * 8) = 0
    with pytest.warns(P.LayerCollapseWarning, match="layer '2' is pruned to nothing"):
        P.prune(m, "magnitude", 0.05, scope="layer")


# ----- iterative magnitude pruning ------------------------------------------------------


def _trainer(n_steps=6, record_at=None, record=None):
    def train(model, on_step):
        g = torch.Generator().manual_seed(0)
        o = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for step in range(1, n_steps + 1):
            x = torch.randn(16, 3, generator=g, dtype=D)
            y = torch.sin(x[:, :2])
            o.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            o.step()
            if record is not None and step == record_at and not record:
                record.update({k: v.detach().clone() for k, v in model.state_dict().items()})
            on_step(step)
        return float(((model(x) - y) ** 2).mean().detach())

    return train


def _effective(m):
    return {
        "0.weight": m[0].weight,
        "0.bias": m[0].bias,
        "2.weight": m[2].weight,
        "2.bias": m[2].bias,
    }


def test_imp_rewind_zero_restores_initial_weights_on_surviving_connections():
    m = _mlp()
    init = {k: v.detach().clone() for k, v in _effective(m).items()}
    ticket = P.imp(m, _trainer(), density=0.3, rounds=3)
    n = 12 + 8
    assert ticket.densities == pytest.approx([0.3 ** (r / 3) for r in (1, 2, 3)])
    assert len(ticket.train_results) == 3
    assert sum(int(v.sum()) for v in ticket.masks.values()) == round(0.3 * n)
    now = _effective(m)
    for layer in ("0", "2"):
        mask = ticket.masks[layer]
        assert torch.equal(now[f"{layer}.weight"].detach(), init[f"{layer}.weight"] * mask)
        assert torch.equal(now[f"{layer}.bias"].detach(), init[f"{layer}.bias"])


def test_imp_rewinds_to_step_k():
    m = _mlp()
    seen = {}
    ticket = P.imp(m, _trainer(record_at=2, record=seen), density=0.5, rounds=2, rewind_step=2)
    now = _effective(m)
    for layer in ("0", "2"):
        w = seen[f"{layer}.weight"]
        assert torch.equal(now[f"{layer}.weight"].detach(), w * ticket.masks[layer])
        assert torch.equal(now[f"{layer}.bias"].detach(), seen[f"{layer}.bias"])
        assert not torch.equal(w, _mlp()[int(layer)].weight.detach())  # step 2 is not init


def test_imp_masks_are_nested_and_bad_rewind_is_reported():
    m = _mlp()
    first = P.imp(m, _trainer(), density=0.6, rounds=1).masks
    second = P.imp(m, _trainer(), density=0.3, rounds=2).masks
    assert all(not (second[n] & ~first[n]).any() for n in first)
    with pytest.raises(ValueError, match="`rewind_step`=50.*6 steps"):
        P.imp(_mlp(), _trainer(), density=0.5, rounds=1, rewind_step=50)
    with pytest.raises(ValueError, match="`rewind_step`"):
        P.imp(_mlp(), _trainer(), density=0.5, rounds=1, rewind_step=-1)
    with pytest.raises(ValueError, match="`density`"):
        P.imp(_mlp(), _trainer(), density=0.0, rounds=1)


@pytest.mark.parametrize("method", ["random", "magnitude", "snip", "grasp", "synflow"])
def test_every_method_on_a_widenets_conv_network(method):
    net = wn.serial(
        wn.Conv(6, (3,), w_std=1.4, b_std=0.1), wn.Relu(), wn.Flatten(), wn.Dense(3, 1.4, 0.1)
    )
    model = net.build((2, 7), seed=0, dtype=D)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 2, 7, generator=g, dtype=D)
    y = torch.randint(0, 3, (10,), generator=g)
    ms = P.prune(model, method, 0.3, data=(x, y), iterations=3, seed=0)
    n = sum(v.numel() for v in ms.values())
    assert sum(int(v.sum()) for v in ms.values()) == round(0.3 * n)
    for name, mod in P.prunable(model).items():
        assert float(mod.weight.detach()[~ms[name]].abs().max()) == 0.0
    assert torch.isfinite(model(x)).all()
