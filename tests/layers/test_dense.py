import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_slicing.layers import SlicedDense
from keras_slicing.rates import active_width
from tests.layers import harness


def _built_layer(in_units=32, units=64, **kwargs):
    layer = SlicedDense(units, activation="relu", bias_initializer="random_normal", **kwargs)
    layer.build((None, in_units))
    return layer


def _inputs_at(rate):
    n_in = active_width(32, rate, 8)
    return (np.random.default_rng(1).normal(size=(5, n_in)).astype("float32"),)


CASE = harness.LayerCase(
    _built_layer, _inputs_at, keras.layers.Dense,
    rates=(1.0, 0.75, 0.5, 0.3, 0.25, 0.125),
)


@pytest.mark.parametrize("check", harness.CHECKS, ids=harness.check_id)
def test_sliced_layer_contract(check, tmp_path):
    check(CASE, tmp_path)


def test_unsliced_output_keeps_full_width_at_every_rate():
    layer = SlicedDense(10, slice_output=False)
    layer.build((None, 32))
    x = np.ones((2, 8), "float32")
    assert layer(x, 0.25).shape == (2, 10)
    kernel, bias = layer.get_weights()
    np.testing.assert_allclose(layer(x, 0.25), x @ kernel[:8] + bias, rtol=1e-6)


def test_units_not_divisible_by_slice_groups_is_rejected():
    with pytest.raises(ValueError, match=r"SlicedDense.*units=20.*slice_groups=8"):
        SlicedDense(20)


def test_unsliced_input_rejects_narrow_input():
    layer = _built_layer(slice_input=False)
    with pytest.raises(ValueError, match="incompatible"):
        layer(np.ones((2, 16), "float32"), 0.5)


@pytest.mark.parametrize("bad", [0.0, 1.5, float("nan"), -1.0])
def test_python_rate_out_of_range_is_rejected(bad):
    layer = _built_layer()
    with pytest.raises(ValueError, match=r"SlicedDense.*\(0, 1\]"):
        layer(np.ones((2, 32), "float32"), bad)


def test_unequal_rate_vector_is_rejected_eagerly():
    layer = _built_layer()
    with pytest.raises(ValueError, match="must be equal"):
        layer(np.ones((2, 32), "float32"), tf.constant([1.0, 0.5]))


@pytest.mark.parametrize("bad", [[1.0, 0.5], [0.0, 0.0], [2.0, 2.0], [np.nan, np.nan]])
def test_bad_rate_tensor_fails_assertion_in_graph(bad):
    layer = _built_layer()
    run = tf.function(lambda x, r: layer(x, r))
    with pytest.raises(tf.errors.InvalidArgumentError, match="slice"):
        run(tf.ones((2, 32)), tf.constant(bad, tf.float32))


def test_symbolic_call_with_python_rate_has_active_width():
    x = keras.Input((32,))
    assert SlicedDense(64)(x, 0.25).shape == (None, 16)


def test_lora_is_rejected():
    with pytest.raises(ValueError, match="lora_rank"):
        SlicedDense(16, lora_rank=2)


def test_numpy_scalar_rate_is_static_like_a_python_float():
    x = keras.Input((32,))
    assert SlicedDense(64)(x, np.float32(0.25)).shape == (None, 16)


def test_bool_rate_is_rejected():
    layer = _built_layer()
    with pytest.raises(ValueError, match="rate=True"):
        layer(np.ones((2, 32), "float32"), True)


def test_empty_batch_runs_in_graph_and_eagerly():
    layer = _built_layer()
    run = tf.function(lambda x, r: layer(x, r))
    empty = tf.zeros((0, 32))
    assert run(empty, tf.zeros((0,))).shape[0] == 0
    assert layer(empty, tf.zeros((0,))).shape[0] == 0
