import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_slicing.layers import SlicedDepthwiseConv2D


def _built_layer(channels=16, depth_multiplier=2):
    layer = SlicedDepthwiseConv2D(3, padding="same", depth_multiplier=depth_multiplier)
    layer.build((None, 6, 6, channels))
    return layer


@pytest.mark.parametrize("n_in", [16, 12, 8, 2])
def test_width_follows_input_and_matches_plain_depthwise(n_in):
    layer = _built_layer()
    kernel, bias = layer.get_weights()
    plain = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2)
    plain.build((None, 6, 6, n_in))
    plain.set_weights([kernel[:, :, :n_in], bias[: 2 * n_in]])
    x = np.random.default_rng(0).normal(size=(2, 6, 6, n_in)).astype("float32")
    got = layer(x, n_in / 16)
    assert got.shape == (2, 6, 6, 2 * n_in)
    np.testing.assert_allclose(got, plain(x), atol=1e-5)
    run = tf.function(lambda x, r: layer(x, r))
    np.testing.assert_allclose(run(x, tf.fill([2], n_in / 16)), plain(x), atol=1e-5)


def test_rate_is_validated_even_though_width_follows_input():
    layer = _built_layer()
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        layer(np.ones((1, 6, 6, 8), "float32"), 1.2)


def test_channels_not_divisible_by_slice_groups_is_rejected():
    layer = SlicedDepthwiseConv2D(3)
    with pytest.raises(ValueError, match="input channels=12.*slice_groups=8"):
        layer.build((None, 6, 6, 12))


def test_config_round_trip():
    layer = _built_layer()
    clone = SlicedDepthwiseConv2D.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
