"""The kernel record's layout API: a layer written with ``Kernel.map`` says only its maths,
gets the base class's input checks, and takes the packed path without declaring anything."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import widenets as wn
import widenets.compute as compute
import widenets.layers as layers


class CropModule(nn.Module):
    def __init__(self, lo, hi):
        super().__init__()
        self.lo, self.hi = lo, hi

    def forward(self, x):
        return x[..., self.lo : self.hi]


@wn.declare
class Crop(wn.Layer):
    """Positions [lo, hi) of the last spatial axis: K'[s, s'] = K[s, s'] for s, s' kept.

    Only public API: the worked example of docs/ARCHITECTURE.md ("Recipe: adding a layer").
    """

    lo: int
    hi: int

    def out_shape(self, in_shape):
        return (*in_shape[:-1], self.hi - self.lo)

    def kernel_fn(self, k):
        cut = slice(self.lo, self.hi)

        def crop(t, n_batch):  # the last axis, or (full layout) the last pair of axes
            return t[..., cut, cut] if k.full_spatial else t[..., cut]

        shape = self.out_shape(k.shape1)
        return k.map(crop, shape1=shape, shape2=shape)

    def make_module(self, in_shape, ctx):
        return CropModule(self.lo, self.hi)


def _images(n=13, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 5, 7, generator=g, dtype=torch.float64)


def _stack():
    return [wn.Conv(3, 3, w_std=1.4, b_std=0.1), wn.Relu(), wn.Conv(3, (3, 1), w_std=1.2)]


def test_a_new_layer_written_with_the_api_packs(monkeypatch):
    layouts = []
    real = compute.plan_tiles

    def spy(*args, **kwargs):
        plan = real(*args, **kwargs)
        layouts.append(plan.layout)
        return plan

    monkeypatch.setattr(compute, "plan_tiles", spy)
    net = wn.serial(*_stack(), Crop(1, 5), wn.Erf(), wn.Flatten(), wn.Dense(1))
    assert net.packs_pairs()  # nothing declared
    x = _images()
    packed = net.kernel(x)
    tiled = net.kernel(x, batch_size=(4, 5))
    assert layouts == ["packed", "diagonal"]
    for field in ("nngp", "ntk", "cov1"):
        assert torch.equal(getattr(packed, field), getattr(tiled, field)), field


@pytest.mark.parametrize("full", [False, True])
def test_the_new_layer_crops_the_kernel(full):
    """Against the kernel of the network without it, cropped by hand (both layouts: an
    AvgPool of window 1, the identity, puts the network in the full layout)."""
    tail = [wn.AvgPool(1)] if full else []
    x, y = _images(), _images(n=5, seed=1)
    whole = wn.serial(*_stack(), *tail).kernel(x, y)
    cropped = wn.serial(*_stack(), Crop(2, 6), *tail).kernel(x, y)
    cut = slice(2, 6)
    for field in ("nngp", "ntk"):
        want = getattr(whole, field)
        want = want[..., cut, cut] if full else want[..., cut]
        torch.testing.assert_close(getattr(cropped, field), want, rtol=1e-12, atol=0)
    # the finite face agrees in shape
    assert wn.serial(*_stack(), Crop(2, 6)).build((2, 5, 7), seed=0)(x.float()).shape == (
        13,
        3,
        5,
        4,
    )


def test_the_base_class_checks_the_input():
    k = wn.Kernel(
        nngp=torch.ones(2, 2),
        ntk=None,
        cov1=torch.ones(2),
        cov2=torch.ones(2),
        shape1=(3,),
        shape2=(3,),
    )
    with pytest.raises(ValueError, match=r"Crop\(0, 1\) takes a single input, got 2 branches"):
        Crop(0, 1).kernel_fn([k, k])
    for layer in (wn.Relu(), wn.LayerNorm()):  # not Gaussian: the input kernel
        with pytest.raises(ValueError, match="needs a Gaussian input"):
            layer.kernel_fn(k)
    assert wn.fan_in_sum().kernel_fn([k, k]).nngp[0, 0] == 2.0  # a merge takes branches


def test_map_keeps_the_shared_variances_and_a_missing_ntk():
    q = torch.tensor([1.0, 2.0])
    k = wn.Kernel(nngp=torch.ones(2, 2), ntk=None, cov1=q, cov2=q, shape1=(3,), shape2=(3,))
    seen = []

    def fn(t, n_batch):
        seen.append(n_batch)
        return t * 3

    out = k.map(fn, is_gaussian=True)
    assert out.ntk is None and out.cov2 is out.cov1 and out.is_gaussian
    assert seen == [2, 1] and torch.equal(out.cov1, 3 * q) and torch.equal(out.nngp, 3 * k.nngp)
    two = k.replace(ntk=torch.zeros(2, 2), cov2=q.clone())
    out = two.map(fn, ntk=lambda theta, nngp: theta + nngp)
    assert torch.equal(out.ntk, 3 * k.nngp) and out.cov2 is not out.cov1
    assert torch.equal(out.cov2, 3 * q)


def test_only_layers_that_cannot_pack_say_so():
    cannot = {"AvgPool", "GlobalAvgPool", "GlobalSelfAttention", "DEQ"}
    for name in layers.__all__:
        cls = getattr(layers, name)
        if isinstance(cls, type) and issubclass(cls, wn.Layer) and cls is not wn.Layer:
            assert cls.handles_packed_pairs == (name not in cannot), name


class Naive(wn.Layer):  # reads the variances as if the kernel were a square (N1, N2)
    def kernel_fn(self, k):
        norm = (k.cov1.unsqueeze(1) * k.cov2.unsqueeze(0)).sqrt()
        return k.replace(nngp=k.nngp / norm, ntk=None if k.ntk is None else k.ntk / norm)


class Forgetful(wn.Layer):  # drops the list of pairs
    def kernel_fn(self, k):
        return k.replace(pairs=None)


@pytest.mark.parametrize("layer", [Naive, Forgetful])
def test_a_layer_that_ignores_the_layout_is_an_error_not_a_wrong_kernel(layer, monkeypatch):
    """A layer that does not use the API in the packed layout: an error naming
    ``handles_packed_pairs`` rather than a wrong kernel; declared, the diagonal layout."""
    net = wn.serial(wn.Conv(2, 3), layer(), wn.Flatten(), wn.Dense(1))
    x = _images(n=6)
    with pytest.raises(ValueError, match="must declare handles_packed_pairs = False"):
        net.kernel(x)
    monkeypatch.setattr(layer, "handles_packed_pairs", False)
    k, ref = net.kernel(x), net.kernel(x, batch_size=2)
    assert torch.equal(k.nngp, ref.nngp)


def test_the_new_layer_has_declared_hyperparameters():
    assert Crop(1, 5) == Crop(1, 5) and hash(Crop(1, 5)) == hash(Crop(1, 5))
    assert Crop(1, 5) != Crop(1, 4)
    assert repr(Crop(1, 5)) == "Crop(1, 5)"


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("batch_size", [None, 1, (3, 2), (13, 5)])
def test_the_new_layer_does_not_depend_on_the_tile_size(full, batch_size):
    tail = [wn.AvgPool(1)] if full else []
    net = wn.serial(*_stack(), Crop(1, 5), wn.Relu(), *tail, wn.Flatten(), wn.Dense(1))
    x, y = _images(), _images(n=5, seed=1)
    for args in ((x,), (x, y)):
        ref = net.kernel(*args, batch_size=(13, 13))
        got = net.kernel(*args, batch_size=batch_size)
        for field in ("nngp", "ntk"):
            torch.testing.assert_close(getattr(got, field), getattr(ref, field), rtol=1e-13, atol=0)


@pytest.mark.parametrize("get", ["nngp", "ntk"])
def test_the_new_layer_matches_monte_carlo(get):
    """The average over finite networks built from the same description (the Crop module
    inside them) converges to the analytic kernel (tests/_mc.py: within 4.5 standard errors
    plus an O(1/width) allowance, and closer at the larger width)."""
    from tests._mc import assert_converges

    net = wn.serial(wn.Conv(4, 3, w_std=1.4, b_std=0.1), wn.Relu(), Crop(1, 4), wn.Flatten())
    net = wn.serial(net, wn.Dense(1))
    x = _images(n=3)[..., :5, :6]
    assert_converges(net, x, get=get, widths=(4, 48), n_samples=24)
