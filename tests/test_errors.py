"""Bad input gets a clear error naming the argument."""

import math

import numpy as np
import pytest
import torch

import widenets as wn


def _net():
    return wn.serial(wn.Dense(8, w_std=1.5), wn.Relu(), wn.Dense(1))


def test_mismatched_feature_dimensions():
    with pytest.raises(ValueError, match=r"`x1` and `x2`.*\(3\).*\(4\)"):
        _net().kernel(torch.randn(5, 3), torch.randn(5, 4))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_or_inf_inputs(bad):
    x = torch.randn(5, 3)
    x[2, 1] = bad
    with pytest.raises(ValueError, match=r"`x1` contains NaN or inf.*\(2, 1\)"):
        _net().kernel(x)
    with pytest.raises(ValueError, match=r"`x2` contains NaN or inf"):
        _net().kernel(torch.randn(4, 3), x)


def test_one_dimensional_input():
    with pytest.raises(ValueError, match=r"`x1` must have at least 2 dimensions.*x\[:, None\]"):
        _net().kernel(torch.randn(5))


@pytest.mark.parametrize("width", [0, -3, 2.5, True])
def test_non_positive_widths(width):
    with pytest.raises(ValueError, match="`out_dim` must be a positive integer"):
        wn.Dense(width)
    with pytest.raises(ValueError, match="`width` must be a positive integer"):
        _net().with_widths(width)


def test_negative_or_nonfinite_std():
    with pytest.raises(ValueError, match="`w_std` must be a finite non-negative"):
        wn.Dense(4, w_std=-1.0)
    with pytest.raises(ValueError, match="`b_std` must be a finite non-negative"):
        wn.Dense(4, b_std=float("nan"))


def test_unknown_parameterization_and_get():
    with pytest.raises(ValueError, match="`parameterization` must be one of"):
        wn.Dense(4, parameterization="mean-field-ish")
    with pytest.raises(ValueError, match="`get` must be"):
        _net().kernel(torch.randn(3, 2), get="nngpp")


def test_nonlinearity_needs_gaussian_input():
    with pytest.raises(ValueError, match="Relu.*needs a Gaussian input"):
        wn.serial(wn.Relu(), wn.Dense(1)).kernel(torch.randn(3, 2))
    with pytest.raises(ValueError, match="Gaussian input"):
        wn.serial(wn.Dense(3), wn.Relu(), wn.Erf()).kernel(torch.randn(3, 2))


def test_branch_errors():
    with pytest.raises(ValueError, match="put fan_out\\(2\\) before it"):
        wn.serial(wn.Dense(3), wn.parallel(wn.Relu(), wn.Erf())).kernel(torch.randn(3, 2))
    with pytest.raises(ValueError, match="several branches"):
        wn.serial(wn.Dense(3), wn.fan_out(2)).kernel(torch.randn(3, 2))
    with pytest.raises(ValueError, match="fan_in_sum needs branches of equal shape"):
        net = wn.serial(wn.fan_out(2), wn.parallel(wn.Dense(3), wn.Dense(4)), wn.fan_in_sum())
        net.kernel(torch.randn(3, 2))
    with pytest.raises(TypeError, match="`serial` arguments must be widenets layers"):
        wn.serial(wn.Dense(3), torch.nn.ReLU())


def test_build_errors_and_input_shape():
    with pytest.raises(ValueError, match="`input_shape` must be a positive integer"):
        _net().build((0,))
    with pytest.raises(ValueError, match="`input_shape` must be a tuple"):
        _net().build("abc")
    with pytest.raises(ValueError, match="model.*rejected inputs"):
        wn.empirical.ntk(_net().build((3,), seed=0), torch.randn(4, 5))


def test_bad_types_and_batch_size():
    with pytest.raises(TypeError, match="`x1` must hold real numbers"):
        _net().kernel(np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="`batch_size` must be a positive int"):
        _net().kernel(torch.randn(3, 2), batch_size=0)
    with pytest.raises(ValueError, match="`dtype` must be a floating torch dtype"):
        _net().kernel(torch.randn(3, 2), dtype=torch.int64)
    with pytest.raises(ValueError, match="`n_samples` must be a positive integer"):
        wn.empirical.monte_carlo(_net(), torch.randn(3, 2), n_samples=0)


def test_elementwise_rejects_non_elementwise_functions():
    with pytest.raises(TypeError, match="`fn` must be a callable"):
        wn.Elementwise(3.0)
    with pytest.raises(TypeError, match="elementwise"):
        wn.Elementwise(lambda x: x.sum())
    with pytest.raises(ValueError, match="`degree` must be a positive integer"):
        wn.Elementwise(torch.tanh, degree=0)


def test_empirical_ntk_of_model_without_parameters():
    with pytest.raises(ValueError, match="no trainable parameters"):
        wn.empirical.ntk(torch.nn.ReLU(), torch.randn(3, 2))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: _net().kernel(torch.randn(5, 3, device="meta")), r"`x1` is on the meta device"),
        (
            lambda: _net().kernel(torch.randn(5, 3), torch.empty(4, 3, device="meta")),
            r"`x2` is on the meta device",
        ),
        (lambda: _net().kernel(torch.randn(5, 3), batch_size=2.0), r"`batch_size`.*got 2\.0"),
        (
            lambda: _net().kernel(torch.randn(5, 3), batch_size=(1, 2, 3)),
            r"`batch_size`.*\(1, 2, 3\)",
        ),
        (lambda: _net().kernel(torch.randn(5, 3), batch_size="4"), r"`batch_size`.*'4'"),
        (lambda: _net().kernel(torch.randn(5, 3), batch_size=(2, 0)), r"`batch_size`.*\(2, 0\)"),
        (lambda: _net().build((3,), seed="a"), r"`seed` must be a non-negative integer.*'a'"),
        (lambda: _net().build((3,), seed=-1), r"`seed`.*-1"),
        (lambda: _net().build((3,), seed=1.5), r"`seed`.*1\.5"),
        (lambda: _net().build((3,), dtype=torch.int64), r"`dtype` must be a floating.*int64"),
        (lambda: _net().build((3,), dtype="float32"), r"`dtype`.*'float32'"),
        (lambda: _net().build((3,), init="orth"), r"`init` must be None or a widenets\.init"),
        (lambda: _net().build((3,), generator=0), r"`generator` must be a torch\.Generator"),
    ],
)
def test_errors_a_user_can_act_on(call, message):
    """Each was a raw Python or torch error before ("cannot unpack non-iterable float",
    "Tensor.item() cannot be called on meta tensors", "'str' object has no attribute")."""
    with pytest.raises(ValueError, match=message) as err:
        call()
    assert "\n" not in str(err.value)


def test_good_build_arguments_still_work():
    m = _net().build((3,), seed=np.int64(3), init=wn.init.Orthogonal(), dtype=torch.float64)
    assert next(m.parameters()).dtype == torch.float64
    k = _net().kernel(torch.randn(5, 3), batch_size=[2, 3])
    assert k.ntk.shape == (5, 5)
