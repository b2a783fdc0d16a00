import math

import numpy as np
import pytest
import tensorflow as tf

import keras_slicing
from keras_slicing import backend
from keras_slicing import rates


@pytest.mark.parametrize("slice_groups", [1, 4, 8, 16, 64])
def test_rate_k_over_groups_gives_exactly_k_groups(slice_groups):
    for k in range(1, slice_groups + 1):
        assert rates.active_groups(k / slice_groups, slice_groups) == k


@pytest.mark.parametrize(
    "rate, expected", [(0.3, 3), (0.26, 3), (1e-9, 1), (0.999, 8), (0.1, 1)]
)
def test_rates_between_multiples_round_up(rate, expected):
    assert rates.active_groups(rate, 8) == expected


def test_float32_tensor_rates_agree_with_python_rates():
    grid = np.concatenate([np.arange(1, 65) / 64, np.linspace(0.01, 1, 97)])
    for slice_groups in (3, 8, 64):
        got = [
            int(backend.groups_from_rate_scalar(tf.constant(r, tf.float32), slice_groups))
            for r in grid
        ]
        want = [rates.active_groups(r, slice_groups) for r in grid]
        assert got == want


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.0001, float("nan"), float("inf"), "x", None])
def test_invalid_rate_is_rejected_with_range_in_message(bad):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        rates.validate_rate(bad, "test")


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_invalid_slice_groups_is_rejected(bad):
    with pytest.raises(ValueError, match="slice_groups"):
        rates.validate_slice_groups(bad, "SlicedDense")


def test_active_width_scales_groups_by_group_size():
    assert rates.active_width(64, 0.5, 8) == 32
    assert rates.active_width(64, 0.3, 8) == 24
    assert math.isclose(rates.active_width(64, 1.0, 8), 64)


def test_rate_input_is_a_scalar_per_example():
    rate = keras_slicing.rate_input()
    assert tuple(rate.shape) == (None,)
    assert rate.dtype == "float32"


def test_format_rate_is_short():
    assert [rates.format_rate(r) for r in (1.0, 0.75, 0.5, 0.25)] == [
        "1", "0.75", "0.5", "0.25"
    ]


@pytest.mark.parametrize(
    "fed", [0.5, np.float32(0.5), np.full(3, 0.5), np.full((3, 1), 0.5)],
    ids=["python", "scalar", "vector", "column"],
)
def test_fed_rate_becomes_a_batch_vector(fed):
    vector = rates.rate_vector(fed, 3)
    assert vector.shape == (3,) and vector.dtype == np.float32
    np.testing.assert_array_equal(vector, [0.5, 0.5, 0.5])


@pytest.mark.parametrize("shape", [(2,), (3, 2), (1, 3)])
def test_fed_rate_of_another_shape_is_refused(shape):
    with pytest.raises(ValueError, match=r"\(N,\) or \(N, 1\)"):
        rates.rate_vector(np.full(shape, 0.5), 3)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.full(4, np.nan, "float32"), r"must be in \(0, 1\]\. Received: rate=nan"),
        (np.full(2, 0.5, "float32"), r"\(N,\) or \(N, 1\), N = 4.*shape \(2,\)"),
        (np.array(["0.5"] * 4), r"a number in \(0, 1\].*dtype <U3"),
        ("0.5", r"a number in \(0, 1\].*rate='0\.5'"),
    ],
    ids=["nan", "short vector", "text array", "text"],
)
def test_layer_refuses_a_bad_rate_naming_itself_and_the_allowed_values(bad, message):
    layer = keras_slicing.layers.SlicedDense(8, name="d")
    x = np.ones((4, 3), "float32")
    with pytest.raises(ValueError, match=message) as error:
        layer(x, bad)
    assert str(error.value).startswith("SlicedDense 'd': ")
    assert len(str(error.value)) < 300
