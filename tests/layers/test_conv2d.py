import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_slicing.layers import SlicedConv2D
from keras_slicing.rates import active_width

RATES = [1.0, 0.75, 0.5, 0.3, 0.25]


def _built_layer(in_channels=16, filters=32, **kwargs):
    layer = SlicedConv2D(filters, 3, padding="same", strides=2, **kwargs)
    layer.build((None, 9, 9, in_channels))
    return layer


def _reference(layer, n_in, n_out):
    kernel, bias = layer.get_weights()
    conv = keras.layers.Conv2D(n_out, 3, padding="same", strides=2)
    conv.build((None, 9, 9, n_in))
    conv.set_weights([kernel[:, :, :n_in, :n_out], bias[:n_out]])
    return conv


@pytest.mark.parametrize("rate", RATES)
def test_rate_matches_plain_conv_on_active_slice(rate):
    layer = _built_layer()
    n_in, n_out = active_width(16, rate, 8), active_width(32, rate, 8)
    x = np.random.default_rng(0).normal(size=(2, 9, 9, n_in)).astype("float32")
    got = layer(x, rate)
    assert got.shape == (2, 5, 5, n_out)
    np.testing.assert_allclose(got, _reference(layer, n_in, n_out)(x), atol=1e-5)


@pytest.mark.parametrize("rate", RATES)
def test_tensor_rate_in_graph_matches_python_rate(rate):
    layer = _built_layer()
    n_in = active_width(16, rate, 8)
    x = tf.random.normal((2, 9, 9, n_in), seed=1)
    run = tf.function(lambda x, r: layer(x, r))
    np.testing.assert_allclose(run(x, tf.fill([2], rate)), layer(x, rate), atol=1e-6)


def test_full_rate_equals_parent_conv_exactly():
    layer = _built_layer()
    x = tf.random.normal((2, 9, 9, 16), seed=2)
    np.testing.assert_array_equal(layer(x, 1.0), _reference(layer, 16, 32)(x))


def test_unsliced_input_and_output_for_first_and_last_layers():
    first = SlicedConv2D(16, 3, slice_input=False)
    assert first(np.ones((1, 5, 5, 3), "float32"), 0.5).shape == (1, 3, 3, 8)
    last = SlicedConv2D(10, 1, slice_output=False)
    last.build((None, 5, 5, 16))
    assert last(np.ones((1, 5, 5, 4), "float32"), 0.25).shape == (1, 5, 5, 10)


def test_filters_not_divisible_by_slice_groups_is_rejected():
    with pytest.raises(ValueError, match=r"filters=12.*slice_groups=8"):
        SlicedConv2D(12, 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"groups": 2}, "groups=2"), ({"data_format": "channels_first"}, "channels_last")],
)
def test_unsupported_options_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SlicedConv2D(16, 3, **kwargs)


def test_config_round_trip_keeps_slicing_arguments():
    layer = _built_layer(slice_groups=4, slice_input=False)
    config = layer.get_config()
    clone = SlicedConv2D.from_config(config)
    assert (clone.slice_groups, clone.slice_input, clone.slice_output) == (4, False, True)
    assert clone.get_config() == config
