"""Declared hyperparameters: repr, equality, hashing and copies of layers and networks."""

import dataclasses

import pytest
import torch

import widenets as wn

A = wn.architectures


def _nets():
    """Two constructions of each network (equal), and one that differs in one value."""
    return [
        (lambda: A.fully_connected(2, 16, 3), A.fully_connected(2, 16, 3, w_std=1.0)),
        (lambda: A.cnn_gap(2, 8, 3), A.cnn_gap(2, 8, 3, kernel_size=5)),
        (lambda: A.myrtle(5, 8, 2), A.myrtle(7, 8, 2)),
        (lambda: A.wide_resnet(1, 1, 3, 4, 2), A.wide_resnet(1, 2, 3, 4, 2)),
        (lambda: wn.DEQ(8, wn.Erf(), 0.5), wn.DEQ(8, wn.Erf(c=0.1), 0.5)),
        (lambda: wn.GlobalSelfAttention(4, 3, 3, 2), wn.GlobalSelfAttention(4, 3, 3, 1)),
        (lambda: wn.scaled(wn.Dense(3), 2.0), wn.scaled(wn.Dense(3), 2.0, center=False)),
        (lambda: wn.LeakyRelu(0.2), wn.LeakyRelu(0.3)),
        (lambda: wn.AvgPool(2), wn.AvgPool(2, padding="same")),
    ]


@pytest.mark.parametrize("make,other", _nets(), ids=lambda v: "" if callable(v) else repr(v)[:30])
def test_equal_networks_compare_and_hash_equal(make, other):
    a, b = make(), make()
    assert a is not b and a == b and hash(a) == hash(b)
    assert a != other
    assert len({a, b, other}) == 2
    assert "\n" not in repr(a) and repr(a) == repr(b) and repr(a) != repr(other)


def test_repr_shows_required_values_and_changed_defaults():
    assert repr(wn.Dense(512)) == "Dense(512)"
    assert repr(wn.Dense(8, 1.5, 0.1, "standard")) == (
        "Dense(8, w_std=1.5, b_std=0.1, parameterization='standard')"
    )
    assert repr(wn.serial(wn.Conv(4, 3), wn.Relu(), wn.Flatten())) == (
        "serial(Conv(4), Relu(), Flatten())"
    )
    assert repr(wn.DEQ(8, wn.Relu(), depth=3)) == "DEQ(8, Relu(), depth=3)"
    assert repr(wn.Elementwise(torch.tanh, degree=16)) == "Elementwise(tanh, degree=16)"


def test_elementwise_equality_is_by_function_object():
    assert wn.Elementwise(torch.tanh) == wn.Elementwise(torch.tanh)
    assert hash(wn.Elementwise(torch.tanh)) == hash(wn.Elementwise(torch.tanh))
    assert wn.Elementwise(torch.tanh) != wn.Elementwise(lambda x: torch.tanh(x))
    assert wn.Elementwise(torch.tanh) != wn.Elementwise(torch.tanh, degree=16)


def test_tensor_scales_compare_by_identity():
    w = torch.tensor(1.5, requires_grad=True)
    a, b = wn.Dense(4, w_std=w), wn.Dense(4, w_std=w)
    assert a == b and hash(a) == hash(b)
    c = wn.Dense(4, w_std=torch.tensor(1.5, requires_grad=True))
    assert a != c  # equal value, another tensor (it may change in place under an optimiser)
    k = wn.serial(a, wn.Relu(), wn.Dense(1)).kernel(torch.randn(3, 2), get="nngp").nngp
    assert k.requires_grad  # still differentiable in the 0-dim tensor scale


def test_replace_validates_and_keeps_the_original():
    d = wn.Dense(8, 1.5)
    e = d.replace(w_std=2.0, out_dim=16)
    assert (d.out_dim, d.w_std, e.out_dim, e.w_std) == (8, 1.5, 16, 2.0)
    assert wn.Conv(4).replace(kernel_size=[5, 5]).kernel_size == (5, 5)  # normalised
    with pytest.raises(ValueError, match="out_dim"):
        d.replace(out_dim=0)
    with pytest.raises(ValueError, match="no hyperparameter 'width'"):
        d.replace(width=3)
    relu = wn.SpikySmooth().replace(amplitude=0.5)
    assert relu._sin.amplitude == 0.5  # derived attributes are recomputed
    assert wn.DEQ(8, wn.Relu()).unrolled(4) == wn.DEQ(8, wn.Relu(), depth=4)


def test_with_widths_replaces_hidden_widths_only():
    net = wn.serial(
        wn.Conv(4, 3),
        wn.Relu(),
        wn.GlobalSelfAttention(4, 3, 3, 2),
        wn.Flatten(),
        wn.Dense(5),
        wn.Relu(),
        wn.Dense(2),
    )
    wide = net.with_widths(32)
    assert [getattr(layer, "out_dim", None) for layer in wide.layers][-3:] == [32, None, 2]
    attn = wide.layers[2]
    assert (attn.n_chan_out, attn.n_chan_key, attn.n_chan_val, attn.n_heads) == (32, 32, 32, 2)
    assert wide.layers[0].out_channels == 32
    assert net.with_widths(32, keep_readout=False).layers[-1].out_dim == 32
    assert net.layers[0].out_channels == 4  # the original is unchanged
    branches = wn.serial(wn.fan_out(2), wn.parallel(wn.Dense(5), wn.Dense(6)), wn.fan_in_sum())
    assert [b.out_dim for b in branches.with_widths(9).layers[1].branches] == [5, 6]
    assert [b.out_dim for b in branches.with_widths(9, keep_readout=False).layers[1].branches] == [
        9,
        9,
    ]


def test_every_exported_layer_class_declares_its_hyperparameters():
    for name in wn.layers.__all__:
        obj = getattr(wn.layers, name)
        if (
            isinstance(obj, type)
            and issubclass(obj, wn.Layer)
            and obj
            not in (
                wn.Layer,
                wn.Activation,
            )
        ):
            assert "__dataclass_fields__" in obj.__dict__, name
    assert all(dataclasses.is_dataclass(layer) for layer in A.myrtle(5, 4, 2).layers)


def test_undeclared_user_layers_compare_by_identity():
    class Crop(wn.Layer):
        def __init__(self, n):
            self.n = n

    a, b = Crop(1), Crop(1)
    # an undeclared layer without its own `name` is shown by its class name
    assert a == a and a != b and hash(a) != hash(b) and repr(a) == "Crop"


def test_equal_networks_share_a_kernel_cache_entry():
    from widenets.kernel_cache import KernelCache

    x = torch.randn(5, 3, dtype=torch.float64).numpy()
    cache = KernelCache()
    first = cache.kernels(A.fully_connected(1, 8, 1), x)  # held, as an estimator does
    n = cache.pairs_computed
    again = cache.kernels(A.fully_connected(1, 8, 1), x)  # a second, equal network: no new work
    assert cache.pairs_computed == n and again.ntk is first.ntk
    cache.kernels(A.fully_connected(1, 8, 1, w_std=1.0), x)
    assert cache.pairs_computed > n
