import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_slicing
from keras_slicing.layers import SlicedLayerNormalization


def _built_layer(features=32):
    layer = SlicedLayerNormalization(
        gamma_initializer="random_normal", beta_initializer="random_normal"
    )
    layer.build((None, 5, features))
    return layer


@pytest.mark.parametrize("n", [32, 24, 16, 8])
def test_active_features_match_plain_layer_norm(n):
    layer = _built_layer()
    gamma, beta = layer.get_weights()
    plain = keras.layers.LayerNormalization()
    plain.build((None, 5, n))
    plain.set_weights([gamma[:n], beta[:n]])
    x = np.random.default_rng(0).normal(1.0, 2.0, size=(3, 5, n)).astype("float32")
    np.testing.assert_allclose(layer(x, n / 32), plain(x), atol=1e-5)
    run = tf.function(lambda x, r: layer(x, r))
    np.testing.assert_allclose(run(x, tf.fill([3], n / 32)), plain(x), atol=1e-5)


def test_statistics_are_those_of_the_active_features():
    layer = _built_layer()
    layer.set_weights([np.ones(32, "float32"), np.zeros(32, "float32")])
    x = np.random.default_rng(1).normal(size=(2, 5, 8)).astype("float32")
    y = keras.ops.convert_to_numpy(layer(x, 0.25))
    mean, std = x.mean(-1, keepdims=True), np.sqrt(x.var(-1, keepdims=True) + 1e-3)
    np.testing.assert_allclose(y, (x - mean) / std, atol=1e-5)


def test_full_rate_equals_parent_exactly():
    layer = _built_layer()
    plain = keras.layers.LayerNormalization()
    plain.build((None, 5, 32))
    plain.set_weights(layer.get_weights())
    x = tf.random.normal((2, 5, 32), seed=3)
    np.testing.assert_array_equal(layer(x, 1.0), plain(x))


def test_extracted_width_is_a_plain_layer_norm(tmp_path):
    x = keras.Input((5, 16))
    rate = keras_slicing.rate_input()
    h = keras_slicing.layers.SlicedDense(32, slice_input=False)(x, rate)
    y = SlicedLayerNormalization(beta_initializer="random_normal")(h, rate)
    model = keras.Model([x, rate], y)
    quarter = keras_slicing.extract_submodel(model, 0.25)
    norm = quarter.layers[-1]
    assert type(norm) is keras.layers.LayerNormalization
    assert norm.gamma.shape == (8,)
    data = np.random.default_rng(2).normal(size=(3, 5, 16)).astype("float32")
    np.testing.assert_allclose(
        quarter(data), model([data, np.full(3, 0.25, "float32")]), atol=1e-6
    )
    model.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras")
    feed = [data, np.full(3, 0.5, "float32")]
    np.testing.assert_array_equal(restored(feed), model(feed))


def test_follows_its_input_width():
    assert SlicedLayerNormalization.follows_input_width
    assert not SlicedLayerNormalization().narrows_channels


def test_other_axis_is_rejected():
    with pytest.raises(ValueError, match="axis=1"):
        SlicedLayerNormalization(axis=1)


def test_features_not_divisible_are_rejected():
    with pytest.raises(ValueError, match=r"features=12 is not divisible by slice_groups=8"):
        SlicedLayerNormalization().build((None, 5, 12))
