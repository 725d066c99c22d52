"""Empirical NTK/NNGP of arbitrary torch modules: every method against an explicit
per-example, per-output autograd Jacobian (float64, 1e-10), parameter subsets, batching,
models with state, keyword and multi-output forwards, convergence to the analytic NTK."""

import copy
import importlib

import pytest
import torch
from torch import nn

import widenets as wn
import widenets.empirical.structured as structured
from widenets.empirical.choice import Force
from widenets.empirical.layer_structure import find_layers
from widenets.empirical.ntk import _explain, _ntk
from widenets.empirical.probes import Probes

DT = torch.float64
TOL = 1e-10
METHODS = ["jacobian", "ntk_vector", "structured", "auto"]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def full_jacobian(model, batch, names=None):
    """(N, O, P) by one autograd.grad call per example and output (the slow reference)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    ps = [p for n, p in named if names is None or n in names]
    model = copy.deepcopy(model).eval()
    ps_copy = dict(model.named_parameters())
    ps = [ps_copy[n] for n, p in named if names is None or n in names]
    rows = []
    n = next(iter(batch.values())).shape[0] if isinstance(batch, dict) else batch.shape[0]
    for i in range(n):
        if isinstance(batch, dict):
            out = model(**{k: v[i : i + 1] for k, v in batch.items()})
        else:
            out = model(batch[i : i + 1])
        if isinstance(out, tuple):
            out = torch.cat([o.reshape(-1) for o in out])
        out = out.reshape(-1)
        for a in range(out.numel()):
            g = torch.autograd.grad(out[a], ps, retain_graph=True, allow_unused=True)
            g = [torch.zeros_like(p) if gi is None else gi for gi, p in zip(g, ps, strict=True)]
            rows.append(torch.cat([gi.reshape(-1) for gi in g]))
    return torch.stack(rows).reshape(n, -1, rows[0].numel())


def reference(model, x1, x2=None, names=None):
    j1 = full_jacobian(model, x1, names)
    j2 = j1 if x2 is None else full_jacobian(model, x2, names)
    full = torch.einsum("iap,jbp->ijab", j1, j2)
    return full.diagonal(dim1=2, dim2=3).mean(-1), full


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
    ).to(DT)


def cnn():
    """Conv2d (zero, circular padding, stride), Conv1d-free 2-D CNN with BatchNorm (eval)."""
    torch.manual_seed(1)
    m = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 3, 3, stride=2, padding=1, padding_mode="circular"),
        nn.BatchNorm2d(3),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(27, 2),
    ).to(DT)
    for bn in (m[1], m[4]):  # running statistics far from (0, 1), so eval mode matters
        bn.running_mean.normal_(generator=_gen(2))
        bn.running_var.uniform_(0.5, 2.0, generator=_gen(3))
        bn.weight.data.uniform_(0.5, 1.5, generator=_gen(4))
        bn.bias.data.normal_(generator=_gen(5))
    return m


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.c1 = nn.Conv1d(3, 5, 3, dilation=2, padding=2).to(DT)
        self.ln = nn.LayerNorm(5).to(DT)
        self.fc = nn.Linear(5, 2).to(DT)  # applied over a (N, L, C) sequence

    def forward(self, x):
        h = torch.relu(self.c1(x)).transpose(1, 2)  # (N, L, 5)
        return self.fc(self.ln(h)).mean(1)


class TwoHeads(nn.Module):
    """Keyword-argument forward, a shared trunk and a tuple of two outputs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.trunk = nn.Linear(4, 12).to(DT)
        self.head_a = nn.Linear(12, 2).to(DT)
        self.head_b = nn.Linear(12, 3, bias=False).to(DT)
        self.drop = nn.Dropout(0.5)

    def forward(self, x, *, shift):
        h = self.drop(torch.tanh(self.trunk(x) + shift))
        return self.head_a(h), torch.sin(self.head_b(h))


def _x(shape, seed):
    return torch.randn(*shape, generator=_gen(seed), dtype=DT)


CASES = {
    "mlp": (mlp, lambda: _x((6, 5), 10), lambda: _x((4, 5), 11)),
    "cnn_bn": (cnn, lambda: _x((5, 2, 5, 5), 12), lambda: _x((3, 2, 5, 5), 13)),
    "conv1d": (Conv1dNet, lambda: _x((5, 3, 7), 14), lambda: _x((3, 3, 7), 15)),
    "multi_output_kwargs": (
        TwoHeads,
        lambda: {"x": _x((5, 4), 16), "shift": _x((5, 12), 17)},
        lambda: {"x": _x((3, 4), 18), "shift": _x((3, 12), 19)},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("method", METHODS)
def test_methods_match_explicit_jacobian(case, method):
    make, make_x1, make_x2 = CASES[case]
    model, x1, x2 = make(), make_x1(), make_x2()
    model.train()  # the NTK is that of eval mode whatever the mode; modes are restored
    ref_tr, ref_full = reference(model, x1)
    ref12_tr, ref12_full = reference(model, x1, x2)
    got = wn.empirical.ntk(model, x1, method=method)
    assert got.shape == ref_tr.shape
    torch.testing.assert_close(got, ref_tr, atol=TOL, rtol=0)
    got_full = wn.empirical.ntk(model, x1, x2, method=method, trace_outputs=False)
    assert got_full.shape == ref12_full.shape
    torch.testing.assert_close(got_full, ref12_full, atol=TOL, rtol=0)
    got_sym_full = wn.empirical.ntk(model, x1, method=method, trace_outputs=False, batch_size=2)
    torch.testing.assert_close(got_sym_full, ref_full, atol=TOL, rtol=0)
    got12 = wn.empirical.ntk(model, x1, x2, method=method, batch_size=(2, 3))
    torch.testing.assert_close(got12, ref12_tr, atol=TOL, rtol=0)
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("budget", [600, 2400, 16])
@pytest.mark.parametrize("case", ["mlp", "cnn_bn", "multi_output_kwargs"])
def test_streamed_jacobian_slices_match_explicit_jacobian(case, budget, monkeypatch):
    """The streamed Jacobian contraction with small budgets: small tensors packed into
    several slices, the MLP's 16 x 16 weight cut into runs of rows, the half Gram of a set
    with itself in 2-row blocks; at 16 scalars a row does not fit and the tiles take over
    (and for the cross kernels, whose slices hold more examples, they may at any budget).
    The same answers at 1e-10."""
    methods = importlib.import_module("widenets.empirical._methods")

    make, make_x1, make_x2 = CASES[case]
    model, x1, x2 = make(), make_x1(), make_x2()
    force = Force(budget=budget)
    monkeypatch.setattr(methods, "GRAM_BLOCK", 2)
    params = {k: v.detach() for k, v in model.named_parameters()}
    n = len(next(iter(x1.values())) if isinstance(x1, dict) else x1)
    plan = methods.StreamedJacobian.plan(model, params, {}, 1, True, n, budget, 1.0)
    if budget == 16:
        assert plan is None  # the traced kernel of x1 with itself falls back to tiles
    else:
        assert plan.passes() > 1 or budget == 2400
        sliced = any(r0 is not None for sl in plan.slices for _, r0, _ in sl)
        assert sliced == (case == "mlp" and budget == 600), plan.slices
    ref_tr, ref_full = reference(model, x1)
    _, ref12_full = reference(model, x1, x2)
    got = _ntk(model, x1, method="jacobian", force=force)
    torch.testing.assert_close(got, ref_tr, atol=TOL, rtol=0)
    assert torch.equal(got, got.T)
    got_full = _ntk(model, x1, method="jacobian", trace_outputs=False, force=force)
    torch.testing.assert_close(got_full, ref_full, atol=TOL, rtol=0)
    got12 = _ntk(model, x1, x2, method="jacobian", trace_outputs=False, force=force)
    torch.testing.assert_close(got12, ref12_full, atol=TOL, rtol=0)


def test_parameter_slices_cover_every_parameter_once():
    from widenets.empirical._methods import parameter_slices

    params = {
        "w": torch.zeros(7, 3),
        "b": torch.zeros(7),
        "s": torch.zeros(()),
        "v": torch.zeros(2),
    }
    slices = parameter_slices(params, 6)
    covered = {}
    for sl in slices:
        size = 0
        for name, r0, r1 in sl:
            p = params[name]
            rows = range(p.shape[0]) if r0 is None and p.ndim else range(r0 or 0, r1 or 1)
            for r in rows:
                covered[(name, r)] = covered.get((name, r), 0) + 1
            size += p.numel() if r0 is None else (r1 - r0) * p[0].numel()
        assert size <= 6
    expected = {("w", r) for r in range(7)} | {("b", r) for r in range(7)} | {("s", 0)}
    expected |= {("v", r) for r in range(2)}
    assert covered == dict.fromkeys(expected, 1)
    assert parameter_slices({"w": torch.zeros(2, 9)}, 6) is None  # one row of 9 > 6


@pytest.mark.parametrize("mode", ["materialised", "pairwise"])
@pytest.mark.parametrize("case", ["cnn_bn", "conv1d"])
def test_structured_modes_for_layers_with_positions(case, mode):
    make, make_x1, make_x2 = CASES[case]
    model, x1, x2 = make(), make_x1(), make_x2()
    force = Force(mode=mode)
    ref_tr, _ = reference(model, x1)
    _, ref12_full = reference(model, x1, x2)
    torch.testing.assert_close(
        _ntk(model, x1, method="structured", force=force), ref_tr, atol=TOL, rtol=0
    )
    got = _ntk(model, x1, x2, method="structured", trace_outputs=False, force=force)
    torch.testing.assert_close(got, ref12_full, atol=TOL, rtol=0)


def test_structured_covers_widenets_dense_layers():
    net = wn.serial(wn.Dense(24, w_std=1.3, b_std=0.2), wn.Erf(), wn.Dense(3, w_std=1.1))
    model = net.build((4,), seed=0, dtype=DT)
    x = _x((5, 4), 20)
    layers = find_layers(
        model, dict(model.named_parameters()), {}, wn.empirical._common.Batch((x,), {})
    )
    assert len(layers) == 2  # both Dense layers handled without Jacobians
    ref_tr, ref_full = reference(model, x)
    torch.testing.assert_close(
        wn.empirical.ntk(model, x, method="structured"), ref_tr, atol=TOL, rtol=0
    )
    got = wn.empirical.ntk(model, x, method="structured", trace_outputs=False)
    torch.testing.assert_close(got, ref_full, atol=TOL, rtol=0)


def test_result_does_not_depend_on_batch_size():
    model, x1, x2 = cnn(), _x((5, 2, 5, 5), 21), _x((4, 2, 5, 5), 22)
    for method in ("jacobian", "ntk_vector", "structured"):
        whole = wn.empirical.ntk(model, x1, x2, method=method)
        for bs in (2, (3, 1)):
            got = wn.empirical.ntk(model, x1, x2, method=method, batch_size=bs)
            torch.testing.assert_close(got, whole, atol=1e-12, rtol=0)
        sym = wn.empirical.ntk(model, x1, method=method)
        torch.testing.assert_close(
            wn.empirical.ntk(model, x1, method=method, batch_size=3), sym, atol=1e-12, rtol=0
        )
        torch.testing.assert_close(sym, sym.T, atol=0, rtol=0)


def test_eval_mode_state_is_used_and_left_untouched():
    model = cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    x = _x((4, 2, 5, 5), 23)
    k_train_mode = wn.empirical.ntk(model, x)
    model.eval()
    assert torch.equal(k_train_mode, wn.empirical.ntk(model, x))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # running statistics not updated


def test_dropout_is_off():
    model = TwoHeads().train()
    x = {"x": _x((4, 4), 24), "shift": _x((4, 12), 25)}
    no_drop = copy.deepcopy(model)
    no_drop.drop = nn.Identity()
    for method in ("jacobian", "structured"):
        a = wn.empirical.ntk(model, x, method=method)
        torch.testing.assert_close(a, wn.empirical.ntk(model, x, method=method), atol=0, rtol=0)
        torch.testing.assert_close(a, wn.empirical.ntk(no_drop, x, method=method), atol=TOL, rtol=0)


def test_parameter_subsets_match_restricted_jacobian():
    model, x = cnn(), _x((4, 2, 5, 5), 26)
    bn_names = ["1.weight", "1.bias", "4.weight", "4.bias"]
    assert wn.empirical.norm_affine(model) == bn_names
    ref, _ = reference(model, x, names=set(bn_names))
    for method in ("jacobian", "ntk_vector", "structured"):
        got = wn.empirical.ntk(model, x, params="norm_affine", method=method)
        torch.testing.assert_close(got, ref, atol=TOL, rtol=0)
    by_pred = wn.empirical.ntk(model, x, params=lambda n, p: n.startswith(("1.", "4.")))
    torch.testing.assert_close(by_pred, ref, atol=TOL, rtol=0)
    by_prefix = wn.empirical.ntk(model, x, params=["1", "4"])
    torch.testing.assert_close(by_prefix, ref, atol=TOL, rtol=0)
    # bias of one conv only: structured handles a lone bias
    ref_b, _ = reference(model, x, names={"0.bias", "7.weight"})
    got_b = wn.empirical.ntk(model, x, params=["0.bias", "7.weight"], method="structured")
    torch.testing.assert_close(got_b, ref_b, atol=TOL, rtol=0)


def test_all_but_embeddings():
    class Tok(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(4)
            self.emb = nn.Embedding(10, 6).to(DT)
            self.fc = nn.Linear(6, 2).to(DT)

        def forward(self, ids):
            return self.fc(torch.tanh(self.emb(ids))).mean(1)

    model = Tok()
    ids = torch.randint(0, 10, (5, 4), generator=_gen(27))
    assert wn.empirical.all_but_embeddings(model) == ["fc.weight", "fc.bias"]
    got = wn.empirical.ntk(model, ids, params="no_embeddings")
    h = torch.tanh(model.emb(ids)).mean(1).detach()  # fc is affine: mean commutes with it
    torch.testing.assert_close(got, h @ h.T + 1, atol=TOL, rtol=0)
    full = wn.empirical.ntk(model, ids, method="jacobian")
    assert (full - got).abs().max() > 1e-3  # embeddings do contribute when included


def test_readout_ntk_is_gram_of_last_hidden_features():
    model, x1, x2 = mlp(), _x((6, 5), 28), _x((3, 5), 29)
    assert wn.empirical.readout(model) == ["4.weight", "4.bias"]
    h1 = model[3](model[2](model[1](model[0](x1)))).detach()
    h2 = model[3](model[2](model[1](model[0](x2)))).detach()
    gram = h1 @ h2.T  # y = W h + b: Theta = (h1 . h2 + 1) I
    for method in ("jacobian", "ntk_vector", "structured"):
        got = wn.empirical.ntk(model, x1, x2, params="readout", method=method)
        torch.testing.assert_close(got, gram + 1, atol=TOL, rtol=0)
    feat = wn.empirical.nngp(model, x1, x2, layer="4")  # mean over the 16 features
    torch.testing.assert_close(feat * 16, gram, atol=TOL, rtol=0)
    # widenets Dense (NTK parameterisation): Theta = s_w^2 h1.h2 + s_b^2
    net = wn.serial(
        wn.Dense(32, w_std=1.4, b_std=0.3), wn.Relu(), wn.Dense(2, w_std=1.2, b_std=0.5)
    )
    m = net.build((5,), seed=1, dtype=DT)
    got = wn.empirical.ntk(m, x1, x2, params="readout")
    feat = wn.empirical.nngp(m, x1, x2, layer="2")
    torch.testing.assert_close(got, 1.2**2 * feat + 0.5**2, atol=TOL, rtol=0)


def test_nngp_of_outputs():
    model, x = TwoHeads(), {"x": _x((4, 4), 30), "shift": _x((4, 12), 31)}
    a, b = model.eval()(**x)
    f = torch.cat([a, b], 1).detach()
    torch.testing.assert_close(wn.empirical.nngp(model, x), f @ f.T / 5, atol=TOL, rtol=0)
    full = wn.empirical.nngp(model, x, trace_outputs=False)
    assert full.shape == (4, 4, 5, 5)


def test_explain_reports_every_method_and_auto_uses_its_choice():
    model, x = mlp(), _x((8, 5), 32)
    rep = wn.empirical.explain(model, x)
    text = str(rep)
    for name in ("jacobian", "ntk_vector", "structured", "<- auto"):
        assert name in text
    assert rep.method in ("jacobian", "ntk_vector", "structured")
    assert rep.n_params == sum(p.numel() for p in model.parameters())
    # a wide MLP: structured Gram products are far cheaper than Jacobian contraction
    wide = nn.Sequential(
        nn.Linear(5, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 1)
    )
    assert wn.empirical.explain(wide, _x((64, 5), 33).float()).method == "structured"
    # a CNN with BatchNorm: as much arithmetic as Jacobians, a fraction of the memory
    torch.manual_seed(5)
    conv = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    x = torch.randn(64, 3, 16, 16)
    rep = wn.empirical.explain(conv, x)
    assert rep.method == "structured", rep
    # ... than Jacobian contraction in one tile; streamed over parameter slices (the
    # default without batch_size), it holds one output's Jacobians instead of all ten
    tiled = wn.empirical.explain(conv, x, batch_size=64)
    assert rep.cost("structured").scalars < tiled.cost("jacobian").scalars / 2, tiled
    assert "streamed" in rep.cost("jacobian").note and "streamed" not in tiled.cost("jacobian").note
    assert rep.cost("jacobian").scalars < tiled.cost("jacobian").scalars / 4, rep


@pytest.mark.parametrize("width_seeds", [(64, 256, 1024)])
def test_wide_built_network_approaches_analytic_ntk(width_seeds):
    """Relative error of the empirical NTK (mean over a wide readout) to net.kernel's NTK,
    averaged over 2 initialisations: shrinks like 1/sqrt(width)."""
    x = _x((6, 4), 34)

    def net(w):
        return wn.serial(
            wn.Dense(w, w_std=1.5, b_std=0.1),
            wn.Relu(),
            wn.Dense(w, w_std=1.5, b_std=0.1),
            wn.Relu(),
            wn.Dense(w, w_std=1.5, b_std=0.1),
        )

    exact = net(8).kernel(x).ntk
    errs = {}
    for w in width_seeds:
        e = 0.0
        for s in range(2):
            emp = wn.empirical.ntk(net(w).build((4,), seed=s, dtype=DT), x)
            e += ((emp - exact).norm() / exact.norm()).item() / 2
        errs[w] = e
    assert errs[1024] < 0.05, errs
    assert errs[1024] < errs[256] < errs[64], errs
    assert errs[1024] < errs[64] / 2.5, errs


def test_bad_input():
    x = _x((3, 5), 35)
    with pytest.raises(ValueError, match="no trainable parameters"):
        wn.empirical.ntk(nn.ReLU(), x)
    frozen = mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        wn.empirical.ntk(frozen, x)
    with pytest.raises(ValueError, match="selected no trainable parameter"):
        wn.empirical.ntk(mlp(), x, params=lambda n, p: False)
    with pytest.raises(ValueError, match="selected no trainable parameter"):
        wn.empirical.ntk(mlp(), x, params="norm_affine")
    with pytest.raises(ValueError, match="'nope' names no trainable parameter"):
        wn.empirical.ntk(mlp(), x, params=["nope"])
    with pytest.raises(TypeError, match="`params` must be"):
        wn.empirical.ntk(mlp(), x, params=3)
    with pytest.raises(ValueError, match="`model` rejected inputs"):
        wn.empirical.ntk(mlp(), _x((3, 4), 36))
    with pytest.raises(ValueError, match="`model` rejected inputs"):
        wn.empirical.nngp(mlp(), _x((3, 4), 36))
    with pytest.raises(ValueError, match="same per-example shapes"):
        wn.empirical.ntk(mlp(), x, _x((3, 4), 36))
    with pytest.raises(ValueError, match="`method` must be one of"):
        wn.empirical.ntk(mlp(), x, method="fast")
    with pytest.raises(ValueError, match="`batch_size` must be a positive int"):
        wn.empirical.ntk(mlp(), x, batch_size=0)
    with pytest.raises(ValueError, match="NaN or inf"):
        wn.empirical.ntk(mlp(), x * float("nan"))
    with pytest.raises(ValueError, match="`layer`: 'head' is not a submodule"):
        wn.empirical.nngp(mlp(), x, layer="head")
    with pytest.raises(TypeError, match="`model` must be a torch.nn.Module"):
        wn.empirical.ntk(lambda t: t, x)


# ---------------------------------------------------------------- structured variants
VARIANTS = list(structured.VARIANTS)


class NormNet(nn.Module):
    """BatchNorm1d on vectors, GroupNorm and LayerNorm over (C, L), an in-place ReLU right
    after a convolution, a bias-free Conv1d with circular padding."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(6)
        self.c1 = nn.Conv1d(3, 6, 3, padding=1, padding_mode="circular", bias=False).to(DT)
        self.act = nn.ReLU(inplace=True)
        self.gn = nn.GroupNorm(2, 6).to(DT)
        self.ln = nn.LayerNorm((6, 5)).to(DT)
        self.fc = nn.Linear(30, 4).to(DT)
        self.bn = nn.BatchNorm1d(4).to(DT)
        self.out = nn.Linear(4, 2).to(DT)
        for p in (self.gn.weight, self.ln.weight, self.bn.weight):
            p.data.uniform_(0.5, 1.5, generator=_gen(7))
        for p in (self.gn.bias, self.ln.bias, self.bn.bias):
            p.data.normal_(generator=_gen(8))
        self.bn.running_mean.normal_(generator=_gen(9))
        self.bn.running_var.uniform_(0.5, 2.0, generator=_gen(10))

    def forward(self, x):
        h = self.ln(torch.tanh(self.gn(self.act(self.c1(x)))))
        return self.out(torch.sin(self.bn(self.fc(h.flatten(1)))))


def widenets_cnn():
    net = wn.serial(
        wn.Conv(4, (3, 3), padding="circular", w_std=1.3, b_std=0.2),
        wn.Relu(),
        wn.Conv(3, (2, 2), stride=2, padding="same", w_std=1.1),
        wn.Erf(),
        wn.Flatten(),
        wn.Dense(2, w_std=1.2, b_std=0.1),
    )
    return net.build((2, 5, 5), seed=3, dtype=DT)


VARIANT_CASES = {
    **CASES,
    "norms": (NormNet, lambda: _x((5, 3, 5), 40), lambda: _x((3, 3, 5), 41)),
    "widenets_cnn": (widenets_cnn, lambda: _x((5, 2, 5, 5), 42), lambda: _x((3, 2, 5, 5), 43)),
}


@pytest.mark.parametrize("case", list(VARIANT_CASES))
@pytest.mark.parametrize("variant", VARIANTS)
def test_structured_variants_match_explicit_jacobian(case, variant):
    """Every way of computing the structured NTK (per example under vmap; batched, held;
    streamed; per output) against the explicit Jacobian, traced and untraced, with one
    tile and with several (off-diagonal tiles run passes over two blocks)."""
    make, make_x1, make_x2 = VARIANT_CASES[case]
    model, x1, x2 = make(), make_x1(), make_x2()
    kw = {"method": "structured", "force": Force(variant=variant)}
    ref_tr, ref_full = reference(model, x1)
    ref12_tr, ref12_full = reference(model, x1, x2)
    got = _ntk(model, x1, **kw)
    torch.testing.assert_close(got, ref_tr, atol=TOL, rtol=0)
    got = _ntk(model, x1, batch_size=2, **kw)
    torch.testing.assert_close(got, ref_tr, atol=TOL, rtol=0)
    got = _ntk(model, x1, x2, batch_size=(2, 3), **kw)
    torch.testing.assert_close(got, ref12_tr, atol=TOL, rtol=0)
    got = _ntk(model, x1, x2, trace_outputs=False, **kw)
    torch.testing.assert_close(got, ref12_full, atol=TOL, rtol=0)
    got = _ntk(model, x1, trace_outputs=False, batch_size=3, **kw)
    torch.testing.assert_close(got, ref_full, atol=TOL, rtol=0)


def test_every_layer_of_the_test_models_is_structured():
    """No Jacobian fallback, so the batched variants are the ones used by default."""
    for case in ("mlp", "cnn_bn", "conv1d", "multi_output_kwargs", "norms", "widenets_cnn"):
        make, make_x1, _ = VARIANT_CASES[case]
        rep = wn.empirical.explain(make(), make_x1())
        cost = rep.cost("structured")
        assert cost.variant in ("streamed", "per_output"), (case, cost)
        assert "by Jacobian" not in cost.note, (case, cost.note)


@pytest.mark.parametrize("mode", ["materialised", "pairwise"])
@pytest.mark.parametrize("variant", ["streamed", "per_output", "batched"])
def test_batched_variants_in_both_modes_for_layers_with_positions(mode, variant):
    kw = {"method": "structured", "force": Force(variant=variant, mode=mode)}
    for case in ("cnn_bn", "conv1d", "norms"):
        make, make_x1, make_x2 = VARIANT_CASES[case]
        model, x1, x2 = make(), make_x1(), make_x2()
        ref12_tr, ref12_full = reference(model, x1, x2)
        got = _ntk(model, x1, x2, batch_size=(3, 2), **kw)
        torch.testing.assert_close(got, ref12_tr, atol=TOL, rtol=0)
        if variant == "batched":
            got = _ntk(model, x1, x2, trace_outputs=False, **kw)
            torch.testing.assert_close(got, ref12_full, atol=TOL, rtol=0)


def test_forced_variant_is_used_only_where_it_can_run_and_explain_says_why():
    """``Force`` steers the choice; a variant that cannot run is not taken, and the
    report's reasons name the variant and why."""
    model, x = mlp(), _x((6, 5), 50)
    rep = _explain(model, x, force=Force(variant="per_output"))
    assert rep.cost("structured").variant == "per_output"
    assert any("structured: per_output (forced" in r for r in rep.reasons), rep.reasons
    rep = _explain(model, x, trace_outputs=False, force=Force(variant="streamed"))
    assert rep.cost("structured").variant == "batched"  # streamed is for traced kernels
    prelu = nn.Sequential(nn.Linear(5, 8), nn.PReLU(), nn.Linear(8, 2)).to(DT)
    rep = _explain(prelu, x, force=Force(variant="streamed"))
    assert rep.cost("structured").variant == "per_example"
    assert any("1 parameter tensor(s) outside recognised layers" in r for r in rep.reasons)
    assert rep.reasons[0].startswith(f"auto: {rep.method}") and str(rep).endswith(rep.reasons[-1])
    with pytest.raises(ValueError, match="`variant` must be one of"):
        Force(variant="fast")
    with pytest.raises(ValueError, match="`mode` must be one of"):
        Force(mode="factored")


def test_layers_run_in_the_modes_the_estimate_costed(monkeypatch):
    """Per output, the Grams of the patches are formed once per output, which the
    estimate counts; the layers must run in the modes chosen with that count (the
    previous code chose them again as if the Grams were formed once, and with a tiny
    budget ran one of cnn_bn's convolutions pairwise while it costed it materialised)."""
    model, x1, x2 = cnn(), _x((5, 2, 5, 5), 44), _x((3, 2, 5, 5), 45)
    force = Force(variant="per_output", budget=1000)
    costed = _explain(model, x1, x2, force=force).cost("structured").modes
    ran = []
    real = structured.StructuredMethod.__init__

    def spy(self, *args, **kwargs):
        real(self, *args, **kwargs)
        ran.append(dict(self.modes))

    monkeypatch.setattr(structured.StructuredMethod, "__init__", spy)
    _ntk(model, x1, x2, method="structured", force=force)
    assert ran and all(m == costed for m in ran), (ran, costed)
    assert list(costed.values()).count("materialised") == 2, costed


def test_tiny_memory_budget_gives_the_same_kernel():
    """Blocks of one example and per-output passes of one example (chunks of 1)."""
    model, x1, x2 = cnn(), _x((5, 2, 5, 5), 44), _x((3, 2, 5, 5), 45)
    ref_tr, _ = reference(model, x1)
    ref12_tr, _ = reference(model, x1, x2)
    for variant in ("streamed", "per_output"):
        force = Force(variant=variant, budget=1000)
        cost = _explain(model, x1, x2, force=force).cost("structured")
        if variant == "per_output":
            assert cost.chunk == 1
        got = _ntk(model, x1, method="structured", force=force)
        torch.testing.assert_close(got, ref_tr, atol=TOL, rtol=0)
        got = _ntk(model, x1, x2, method="structured", force=force)
        torch.testing.assert_close(got, ref12_tr, atol=TOL, rtol=0)


class MixesBatch(nn.Module):
    """Outputs depend on the other examples of the batch (a batch mean): every method
    differentiates example by example, so it would get the NTK of another function."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(11)
        self.fc1 = nn.Linear(4, 8).to(DT)
        self.fc2 = nn.Linear(8, 2).to(DT)

    def forward(self, x):
        h = torch.tanh(self.fc1(x))
        return self.fc2(h + 0.5 * h.mean(0, keepdim=True))


@pytest.mark.parametrize("method", METHODS)
def test_batch_mixing_model_is_rejected_by_every_method(method):
    model, x1, x2 = MixesBatch(), _x((5, 4), 46), _x((3, 4), 47)
    with pytest.raises(ValueError, match="must treat the examples of a batch independently"):
        wn.empirical.ntk(model, x1, x2, method=method)
    with pytest.raises(ValueError, match="mean or sum over the batch"):
        wn.empirical.explain(model, x1)


class FakeAffine(nn.Module):
    """Claims the widenets protocol (weight_scale, bias_scale, a 2-D weight) but is not
    affine: must not be read as a dense layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(12)
        self.weight = nn.Parameter(torch.randn(3, 4, dtype=DT))
        self.bias = nn.Parameter(torch.randn(3, dtype=DT))
        self.weight_scale, self.bias_scale = 0.5, 1.0

    def forward(self, x):
        return torch.tanh(x @ self.weight.T * self.weight_scale) + self.bias


def test_layer_that_is_not_what_it_claims_is_left_to_jacobians():
    model = nn.Sequential(FakeAffine(), nn.Linear(3, 2).to(DT))
    x = _x((4, 4), 48)
    params, frozen = dict(model.named_parameters()), {}
    specs = find_layers(model, params, frozen, wn.empirical._common.Batch((x,), {}))
    assert [s.key for s in specs] == ["1"]
    ref_tr, _ = reference(model, x)
    got = wn.empirical.ntk(model, x, method="structured")
    torch.testing.assert_close(got, ref_tr, atol=TOL, rtol=0)


def test_model_that_fails_on_one_example_gets_a_clear_error():
    """BatchNorm without running statistics normalises by the batch even in eval mode."""
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5, track_running_stats=False)).to(DT)
    with pytest.raises(ValueError, match="fails on a single example"):
        wn.empirical.ntk(model, _x((6, 4), 49))


def test_activation_estimate_leaves_out_tensors_made_from_the_weights_alone():
    """A forward that scales its weight (as widenets' own layers do) saves that scaled
    weight for the reverse pass once, not once per example."""
    from widenets.empirical._common import Batch
    from widenets.empirical.cost import activation_numel

    class ScaledMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.w1 = nn.Parameter(torch.randn(30, 20, dtype=torch.float64))
            self.w2 = nn.Parameter(torch.randn(300, 30, dtype=torch.float64))

        def forward(self, x):  # the reverse pass into w1 needs the scaled w2 (9,000 scalars)
            return torch.tanh(x @ (self.w1 * 0.2).T) @ (self.w2 * 0.1).T

    model = ScaledMLP()
    params = dict(model.named_parameters())
    batch = Batch((torch.randn(5, 20, dtype=torch.float64),), {})
    act = activation_numel(model, params, {}, batch)
    # per example: the input (20) and the hidden layer (30, before and after tanh)
    assert 20 <= act <= 20 + 3 * 30
    one = Batch((batch.args[0][:1],), {})
    assert activation_numel(model, params, {}, one) >= 9000  # one example: nothing to subtract


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("variant", ["streamed", "batched"])
def test_reverse_passes_batched_over_outputs_or_one_by_one(batched, variant, monkeypatch):
    """The reverse passes of several outputs as one pass over one-hot cotangents, or one
    output at a time: both give the explicit Jacobian's kernel."""
    force = Force(variant=variant, reverse_batch=None if batched else 1)
    ran = []
    real = Probes._batched_reverse

    def spy(self, *args):
        ran.append(real(self, *args))
        return ran[-1]

    monkeypatch.setattr(Probes, "_batched_reverse", spy)
    for case in ("mlp", "cnn_bn", "multi_output_kwargs"):
        make, make_x1, make_x2 = VARIANT_CASES[case]
        model, x1, x2 = make(), make_x1(), make_x2()
        ref12_tr, ref12_full = reference(model, x1, x2)
        got = _ntk(model, x1, x2, method="structured", batch_size=(3, 2), force=force)
        torch.testing.assert_close(got, ref12_tr, atol=TOL, rtol=0)
        got = _ntk(model, x1, x2, method="structured", trace_outputs=False, force=force)
        torch.testing.assert_close(got, ref12_full, atol=TOL, rtol=0)
    assert ran and all(ran) == batched and (any(ran) == batched)
