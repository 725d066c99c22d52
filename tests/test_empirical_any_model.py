"""Empirical NTK of common torch modules (transformer layers, LSTM, GRU, embeddings,
multi-head attention) against an explicit per-example Jacobian (float64, 1e-10); the
automatic fallback from methods that cannot run a model down to the per-example loop,
and what explain reports; the check that the model maps each example alone."""

import importlib
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import widenets as wn
from widenets.empirical._checks import check_per_example
from widenets.empirical._common import prepare

ntk_module = importlib.import_module("widenets.empirical.ntk")

DT = torch.float64
TOL = 1e-10
D, HEADS, SEQ, N1, N2 = 8, 2, 5, 6, 4


@pytest.fixture(autouse=True)
def fresh_memory(monkeypatch):
    """Each test starts without remembered method failures."""
    monkeypatch.setattr(ntk_module, "_RUNS", {})
    with warnings.catch_warnings():  # transformer layers warn about nested tensors
        warnings.simplefilter("ignore", UserWarning)
        yield


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _x(shape, seed, dtype=DT):
    return torch.randn(*shape, generator=_gen(seed), dtype=dtype)


# ---------------------------------------------------------------- the reference
def explicit_jacobian(model, x):
    """(N, O, P): one autograd.grad per example and output, on the model as it is (its own
    mode), each example alone; every trainable parameter, integer inputs untouched."""
    ps = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(x.shape[0]):
        out = model(x[i : i + 1]).reshape(-1)
        for a in range(out.numel()):
            g = torch.autograd.grad(out[a], ps, retain_graph=True, allow_unused=True)
            g = [torch.zeros_like(p) if gi is None else gi for gi, p in zip(g, ps, strict=True)]
            rows.append(torch.cat([gi.reshape(-1) for gi in g]))
    return torch.stack(rows).reshape(x.shape[0], -1, rows[0].numel())


def reference(model, x1, x2):
    """Traced x1 with itself (the mean of the output diagonal, as trace_outputs=True) and
    the untraced (N1, N2, O, O) block of x1 against x2."""
    j1, j2 = explicit_jacobian(model, x1), explicit_jacobian(model, x2)
    traced = torch.einsum("iap,jap->ij", j1, j1) / j1.shape[1]
    return traced, torch.einsum("iap,jbp->ijab", j1, j2)


# ---------------------------------------------------------------- the five families
class LastStep(nn.Module):
    """The last time step of a sequence module's output (its first element if a tuple)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        out = self.inner(x)
        if isinstance(out, tuple):  # nn.LSTM: (output, (h, c)); nn.GRU: (output, h)
            out = out[0]
        return out[:, -1]


class Attention(nn.Module):
    """Self-attention, mean over the sequence: (N, D) outputs."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(D, HEADS, batch_first=True)

    def forward(self, x):
        out, _ = self.attn(x, x, x, need_weights=False)
        return out.mean(1)


class Tokens(nn.Module):
    """Token ids -> embeddings -> tanh -> mean over the sequence -> linear."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, D)
        self.fc = nn.Linear(D, 3)

    def forward(self, ids):
        return self.fc(torch.tanh(self.emb(ids)).mean(1))


def _seq(seed):
    return lambda: _x((N1, SEQ, D), seed), lambda: _x((N2, SEQ, D), seed + 1)


def _ids(seed):
    return (
        lambda: torch.randint(0, 11, (N1, SEQ), generator=_gen(seed)),
        lambda: torch.randint(0, 11, (N2, SEQ), generator=_gen(seed + 1)),
    )


def _make(build, train=False):
    def make():
        torch.manual_seed(0)
        m = build().to(DT)
        return m.train() if train else m.eval()

    return make


FAMILIES = {
    # (model, inputs, the methods that can run it)
    "transformer_eval": (
        _make(lambda: LastStep(nn.TransformerEncoderLayer(D, HEADS, 16, batch_first=True))),
        _seq(10),
        ("jacobian", "structured", "loop"),
    ),
    "transformer_train_no_dropout": (
        _make(
            lambda: LastStep(nn.TransformerEncoderLayer(D, HEADS, 16, 0.0, batch_first=True)),
            train=True,
        ),
        _seq(12),
        ("jacobian", "structured", "loop"),
    ),
    "lstm": (_make(lambda: LastStep(nn.LSTM(D, 6, batch_first=True))), _seq(14), ("loop",)),
    "gru": (_make(lambda: LastStep(nn.GRU(D, 6, batch_first=True))), _seq(16), ("loop",)),
    "embedding": (_make(Tokens), _ids(18), ("jacobian", "ntk_vector", "structured", "loop")),
    "multihead_attention": (_make(Attention), _seq(20), ("jacobian", "structured", "loop")),
}
CANNOT = {
    name: sorted({"jacobian", "ntk_vector", "structured"} - set(ok))
    for name, (_, _, ok) in FAMILIES.items()
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_auto_and_every_method_that_runs_match_explicit_jacobian(family):
    make, (make_x1, make_x2), runnable = FAMILIES[family]
    model, x1, x2 = make(), make_x1(), make_x2()
    training = [m.training for m in model.modules()]
    ref_tr, ref12_full = reference(model, x1, x2)
    for method in ("auto", *runnable):
        got = wn.empirical.ntk(model, x1, method=method)
        assert got.shape == (N1, N1) and got.dtype == DT
        torch.testing.assert_close(got, ref_tr, atol=TOL, rtol=0, msg=method)
        got = wn.empirical.ntk(model, x1, x2, method=method, trace_outputs=False)
        torch.testing.assert_close(got, ref12_full, atol=TOL, rtol=0, msg=method)
    got = wn.empirical.ntk(model, x1, x2, method="auto", batch_size=(4, 3))  # several tiles
    torch.testing.assert_close(got, ref12_full.diagonal(dim1=2, dim2=3).mean(-1), atol=TOL, rtol=0)
    assert [m.training for m in model.modules()] == training  # modes restored


@pytest.mark.parametrize("family", [f for f in FAMILIES if CANNOT[f]])
def test_explicit_method_that_cannot_run_gives_one_line_error(family):
    make, (make_x1, _), _ = FAMILIES[family]
    model, x1 = make(), make_x1()
    for method in CANNOT[family]:
        with pytest.raises(ValueError, match=f"method='{method}' cannot run this model") as e:
            wn.empirical.ntk(model, x1, method=method)
        text = str(e.value)
        assert "\n" not in text
        assert "method='auto'" in text and "method='loop'" in text


@pytest.mark.parametrize("family", ["lstm", "gru"])
def test_recurrent_models_fall_back_to_the_loop_and_explain_says_why(family, monkeypatch):
    """nn.LSTM/nn.GRU: the fused kernel has no vmap batching rule and its decomposition
    writes batched values into the zero initial state it creates (unbatched), so every
    vmap-based method fails; auto runs the loop, explain names it and the skipped ones,
    and the failures are remembered: a second call tries nothing that failed."""
    make, (make_x1, _), _ = FAMILIES[family]
    model, x1 = make(), make_x1()
    rep = wn.empirical.explain(model, x1)
    assert rep.method == "loop"
    assert set(rep.skipped) == {"jacobian", "ntk_vector", "structured"}
    assert all("doesn't match the broadcast shape" in r for r in rep.skipped.values())
    text = str(rep)
    assert "cannot run: RuntimeError: output with shape" in text
    assert [line.split()[0] for line in text.splitlines() if "<- auto" in line] == ["loop"]

    tried = []
    real = ntk_module._run

    def spy(setup, name, progress):
        tried.append(name)
        return real(setup, name, progress)

    monkeypatch.setattr(ntk_module, "_run", spy)
    wn.empirical.ntk(model, x1)
    assert tried == ["loop"]  # the failures explain found are not retried
    monkeypatch.setattr(ntk_module, "_RUNS", {})
    tried.clear()
    wn.empirical.ntk(model, x1)  # nothing known: each fails once, then the loop
    assert tried[-1] == "loop" and sorted(tried[:-1]) == ["jacobian", "ntk_vector", "structured"]
    tried.clear()
    wn.empirical.ntk(model, x1)
    assert tried == ["loop"]
    assert wn.empirical.explain(model, x1).method == "loop"  # from memory, no trial


def test_transformer_without_forward_ad_falls_back_from_ntk_vector(monkeypatch):
    """The eval-mode transformer layer runs a fused kernel without forward AD under jvp:
    with ntk_vector preferred, auto falls back to the next method, and explain says why."""
    cost = importlib.import_module("widenets.empirical.cost")
    monkeypatch.setattr(
        cost.CostReport, "order", lambda self: ["ntk_vector", "jacobian", "structured", "loop"]
    )
    make, (make_x1, make_x2), _ = FAMILIES["transformer_eval"]
    model, x1, x2 = make(), make_x1(), make_x2()
    ref_tr, _ = reference(model, x1, x2)
    torch.testing.assert_close(wn.empirical.ntk(model, x1), ref_tr, atol=TOL, rtol=0)
    rep = wn.empirical.explain(model, x1)
    assert rep.method == "jacobian"
    assert list(rep.skipped) == ["ntk_vector"]
    assert "forward AD" in rep.skipped["ntk_vector"]
    assert "[cannot run: NotImplementedError: Trying to use forward AD" in str(rep)


def test_every_family_is_explained_with_a_method_that_runs():
    for name, (make, (make_x1, _), runnable) in FAMILIES.items():
        rep = wn.empirical.explain(make(), make_x1())
        assert rep.method in runnable, (name, str(rep))
        assert set(rep.skipped) <= set(CANNOT[name]), (name, rep.skipped)


def test_integer_inputs_are_not_cast():
    model = FAMILIES["embedding"][0]()
    seen = []
    model.emb.register_forward_pre_hook(lambda mod, args: seen.append(args[0].dtype))
    ids = torch.randint(0, 11, (N1, SEQ), generator=_gen(30))
    for method in ("auto", "jacobian", "ntk_vector", "structured", "loop"):
        wn.empirical.ntk(model, ids, method=method)
    assert seen and set(seen) == {torch.int64}


# ---------------------------------------------------------------- outputs
class RawLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(D, 6, batch_first=True)

    def forward(self, x):
        return self.lstm(x)  # (output, (h, c)): nested


class AttentionTuple(nn.Module):
    def __init__(self, need_weights):
        super().__init__()
        self.attn = nn.MultiheadAttention(D, HEADS, batch_first=True)
        self.need_weights = need_weights

    def forward(self, x):
        return self.attn(x, x, x, need_weights=self.need_weights)


def test_outputs_that_are_not_tensors_name_what_was_returned():
    x = _x((N1, SEQ, D), 31)
    with pytest.raises(TypeError, match=r"got tuple\(Tensor\[2, 5, 6\], tuple\(Tensor") as e:
        wn.empirical.ntk(RawLSTM().to(DT), x)
    assert "wrap the model" in str(e.value)
    with pytest.raises(TypeError, match=r"got tuple\(Tensor\[2, 5, 8\], None\).*wrap the model"):
        wn.empirical.ntk(AttentionTuple(need_weights=False).to(DT), x)
    gru = nn.GRU(D, 6, batch_first=True).to(DT)  # (output, h) with h (layers, N, H)
    with pytest.raises(ValueError, match="batch axis first.*batch_first=True"):
        wn.empirical.ntk(gru, x)


def test_flat_tuple_of_batch_first_outputs_is_differentiated_whole():
    """(attention output, attention weights): both batch first, flattened and joined."""
    torch.manual_seed(1)
    model = AttentionTuple(need_weights=True).to(DT).eval()
    x1 = _x((3, 3, D), 32)

    class Joined(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            out, w = self.inner(x)
            return torch.cat([out.reshape(len(x), -1), w.reshape(len(x), -1)], 1)

    ref_tr, _ = reference(Joined(model), x1, x1)
    torch.testing.assert_close(wn.empirical.ntk(model, x1), ref_tr, atol=TOL, rtol=0)


# ---------------------------------------------------------------- batch coupling
class Head(nn.Module):
    def __init__(self, post):
        super().__init__()
        torch.manual_seed(2)
        self.fc = nn.Linear(4, 3)
        self.post = post

    def forward(self, x):
        return self.post(self.fc(x))


COUPLED = {
    "softmax_over_batch": lambda y: torch.softmax(y, dim=0),
    "minus_batch_mean": lambda y: y - y.mean(0),
    "batch_sum": lambda y: torch.tanh(y) * y.sum(0, keepdim=True),
}


@pytest.mark.parametrize("method", ["auto", "jacobian", "ntk_vector", "structured", "loop"])
@pytest.mark.parametrize("case", list(COUPLED))
def test_models_mixing_the_batch_are_rejected_by_every_method(case, method):
    model, x = Head(COUPLED[case]).to(DT), _x((N1, 4), 33)
    with pytest.raises(ValueError) as e:
        wn.empirical.ntk(model, x, method=method)
    text = str(e.value)
    assert "\n" not in text
    assert text.startswith("`model` must treat the examples of a batch independently")
    assert "each example alone" in text and "found max difference" in text
    assert "softmax(dim=0)" in text and "a mean or sum over the batch" in text
    with pytest.raises(ValueError, match="independently"):  # against x2 too
        wn.empirical.ntk(model, x[:1], x[1:3], method=method)


def _bn_net(track):
    torch.manual_seed(3)
    m = nn.Sequential(
        nn.Conv1d(4, 3, 3), nn.BatchNorm1d(3, track_running_stats=track), nn.Tanh(), nn.Flatten()
    ).to(DT)
    if track:
        m[1].running_mean.normal_(generator=_gen(4))
        m[1].running_var.uniform_(0.5, 2.0, generator=_gen(5))
    return m


def test_batchnorm_with_batch_statistics_is_named():
    """Without running statistics BatchNorm normalises by the batch even in eval mode."""
    x = _x((N1, 4, 7), 34)
    for mode in ("train", "eval"):
        model = getattr(_bn_net(track=False), mode)()
        with pytest.raises(ValueError, match="independently") as e:
            wn.empirical.ntk(model, x)
        text = str(e.value)
        assert "BatchNorm module(s) '1' use batch statistics" in text
        assert "model.eval()" in text and "track_running_stats=True" in text
    vectors = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5, track_running_stats=False))
    with pytest.raises(ValueError, match="fails on a single example.*BatchNorm module"):
        wn.empirical.ntk(vectors.to(DT), _x((N1, 4), 35))


def test_batchnorm_with_running_statistics_passes_in_either_mode():
    """The NTK is taken in eval mode (running statistics): the same kernel, that of the
    eval-mode function, whether the model was left in train or eval mode."""
    x1, x2 = _x((N1, 4, 7), 36), _x((N2, 4, 7), 37)
    model = _bn_net(track=True)
    ref_tr, ref12_full = reference(model.eval(), x1, x2)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        for method in ("auto", "jacobian", "structured", "loop"):
            got = wn.empirical.ntk(model, x1, method=method)
            torch.testing.assert_close(got, ref_tr, atol=TOL, rtol=0)
        got = wn.empirical.ntk(model, x1, x2, trace_outputs=False)
        torch.testing.assert_close(got, ref12_full, atol=TOL, rtol=0)
        assert model[1].training == (mode == "train")


def test_attention_with_batch_second_is_named():
    class SeqFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(D, HEADS)  # batch_first=False

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0].mean(1)

    with pytest.raises(ValueError, match=r"'attn' take \(sequence, batch, \.\.\.\) inputs"):
        wn.empirical.ntk(SeqFirst().to(DT), _x((N1, SEQ, D), 38))


class AlwaysDropout(nn.Module):
    """F.dropout's default is training=True: on even in eval mode."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.fc1 = nn.Linear(4, 16)
        self.fc2 = nn.Linear(16, 2)

    def forward(self, x):
        return self.fc2(F.dropout(torch.tanh(self.fc1(x)), 0.5))


def test_random_model_is_rejected_and_train_mode_dropout_is_off():
    x = _x((N1, 4), 39)
    for method in ("auto", "loop"):
        with pytest.raises(ValueError, match="must be deterministic in eval mode") as e:
            wn.empirical.ntk(AlwaysDropout().to(DT), x, method=method)
        assert "F.dropout(x, p)" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="deterministic"):  # a single example too
        wn.empirical.ntk(AlwaysDropout().to(DT), x[:1])
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 2))
    model = model.to(DT).train()
    no_drop = nn.Sequential(*[m for m in model if not isinstance(m, nn.Dropout)])
    ref_tr, _ = reference(no_drop, x, x)
    torch.testing.assert_close(wn.empirical.ntk(model, x), ref_tr, atol=TOL, rtol=0)
    assert model.training


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_deterministic_float32_models_never_trip_the_check(n):
    """Batched and one-example passes round differently in float32 (blocked reductions,
    fused attention kernels); far below the tolerance."""
    torch.manual_seed(6)
    seq = _x((n, 12, 16), 40, torch.float32) * 3
    models = [
        (nn.TransformerEncoderLayer(16, 4, 64, batch_first=True).eval(), seq),
        (LastStep(nn.LSTM(16, 32, num_layers=2, batch_first=True)), seq),
        (
            nn.Sequential(
                nn.Conv2d(3, 32, 3, padding=1),
                nn.BatchNorm2d(32),
                nn.ReLU(),
                nn.Conv2d(32, 32, 3),
                nn.Flatten(),
                nn.Linear(32 * 36, 10),
            ).eval(),
            _x((n, 3, 8, 8), 41, torch.float32) * 10,
        ),
        (
            nn.Sequential(*[nn.Sequential(nn.Linear(256, 256), nn.Tanh()) for _ in range(8)]),
            _x((n, 256), 42, torch.float32),
        ),
    ]
    for model, x in models:
        b1, b2 = prepare(model, x, None if n < 2 else x[: n // 2])
        check_per_example(model, b1, b2)
        check_per_example(model, b1, None)


# ---------------------------------------------------------------- other fallbacks
def test_widenets_deq_falls_back_to_the_loop():
    """DEQ refuses torch.func transforms (its solve stops on a data-dependent test)."""
    net = wn.serial(wn.DEQ(16, wn.Erf(), w_std=0.5, u_std=1.0, b_std=0.1), wn.Dense(2))
    model = net.build((3,), seed=0, dtype=DT)
    x1, x2 = _x((4, 3), 43), _x((3, 3), 44)
    ref_tr, ref12_full = reference(model, x1, x2)
    torch.testing.assert_close(wn.empirical.ntk(model, x1), ref_tr, atol=TOL, rtol=0)
    got = wn.empirical.ntk(model, x1, x2, trace_outputs=False)
    torch.testing.assert_close(got, ref12_full, atol=TOL, rtol=0)
    rep = wn.empirical.explain(model, x1)
    assert rep.method == "loop" and "torch.func transforms" in rep.skipped["jacobian"]


class FailsWithGradients(nn.Module):
    """Runs without gradients (the check) but fails whenever they are recorded: its own
    error, which the fallback must not hide."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        if torch.is_grad_enabled():
            raise RuntimeError("boom from the model")
        return self.fc(x)


def test_errors_of_the_model_itself_are_not_swallowed():
    with pytest.raises(RuntimeError, match="boom from the model"):
        wn.empirical.ntk(FailsWithGradients().to(DT), _x((4, 3), 45))
    assert not ntk_module.cannot_run(torch.OutOfMemoryError("CUDA out of memory"))
    assert not ntk_module.cannot_run(ValueError("vmap"))
    assert ntk_module.cannot_run(NotImplementedError("Trying to use forward AD with aten::x"))
    assert ntk_module.cannot_run(RuntimeError("Batching rule not implemented for aten::gru"))
