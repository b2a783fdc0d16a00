import keras
import numpy as np
import pytest

import keras_slicing
from keras_slicing.layers import SlicedLayerNormalization
from keras_slicing.rates import active_width
from tests.layers import harness


def _built_layer(features=32):
    layer = SlicedLayerNormalization(
        gamma_initializer="random_normal", beta_initializer="random_normal"
    )
    layer.build((None, 5, features))
    return layer


def _inputs_at(rate):
    n = active_width(32, rate, 8)
    return (np.random.default_rng(0).normal(1.0, 2.0, size=(3, 5, n)).astype("float32"),)


CASE = harness.LayerCase(_built_layer, _inputs_at, keras.layers.LayerNormalization)


@pytest.mark.parametrize("check", harness.CHECKS, ids=harness.check_id)
def test_sliced_layer_contract(check, tmp_path):
    check(CASE, tmp_path)


def test_statistics_are_those_of_the_active_features():
    layer = _built_layer()
    layer.set_weights([np.ones(32, "float32"), np.zeros(32, "float32")])
    x = np.random.default_rng(1).normal(size=(2, 5, 8)).astype("float32")
    y = keras.ops.convert_to_numpy(layer(x, 0.25))
    mean, std = x.mean(-1, keepdims=True), np.sqrt(x.var(-1, keepdims=True) + 1e-3)
    np.testing.assert_allclose(y, (x - mean) / std, atol=1e-5)


def test_extracted_width_is_a_plain_layer_norm():
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


def test_follows_its_input_width():
    assert SlicedLayerNormalization.follows_input_width
    assert not SlicedLayerNormalization().narrows_channels


def test_other_axis_is_rejected():
    with pytest.raises(ValueError, match="axis=1"):
        SlicedLayerNormalization(axis=1)


def test_features_not_divisible_are_rejected():
    with pytest.raises(ValueError, match=r"features=12 is not divisible by slice_groups=8"):
        SlicedLayerNormalization().build((None, 5, 12))
