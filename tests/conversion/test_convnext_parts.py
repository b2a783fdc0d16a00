"""slice_model on ConvNeXt's parts: grouped depthwise convolutions, layer scale."""

import keras
import numpy as np
import pytest

import keras_slicing
from keras_slicing import keras_internals
from keras_slicing import layers
from tests.conversion import plain_models

K = keras.layers


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _data(n=8, seed=0):
    x = np.random.default_rng(seed).random((n, 8, 8, 3)).astype("float32")
    return x, np.arange(n) % 4


def test_grouped_depthwise_conv_and_layer_scale_become_sliced_layers():
    sliced = keras_slicing.slice_model(plain_models.convnext_block())
    depthwise = sliced.get_layer("depthwise")
    assert isinstance(depthwise, layers.SlicedDepthwiseConv2D)
    assert depthwise.depth_multiplier == 2
    assert isinstance(sliced.get_layer("layer_scale"), layers.SlicedLayerScale)
    assert sliced.slicing_plan.full_layers == {}
    keras_slicing.check_model(sliced)


@pytest.mark.parametrize("rewire", [None, "l1", "taylor"])
def test_full_width_matches_the_original(rewire):
    plain = plain_models.convnext_block()
    x, y = _data()
    sliced = keras_slicing.slice_model(plain, rewire=rewire, data=(x, y))
    want = _numpy(plain(x))
    np.testing.assert_allclose(_numpy(sliced(x)), want, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("rate", [0.5, 0.25])
def test_narrow_depthwise_is_the_original_grouped_conv_on_the_first_channels(rate):
    plain = plain_models.convnext_block()
    x, _ = _data()
    n = int(16 * rate)
    sub = keras_slicing.extract_submodel(keras_slicing.slice_model(plain, rewire=None), rate)
    before = _numpy(keras.Model(sub.inputs, sub.get_layer("stem_ln").output)(x))
    have = _numpy(keras.Model(sub.inputs, sub.get_layer("depthwise").output)(x))
    # The original layer's first n groups, as a plain grouped convolution.
    original = plain.get_layer("depthwise")
    reference = K.Conv2D(2 * n, 3, padding="same", groups=n)
    reference.build((None, 4, 4, n))
    kernel, bias = (_numpy(w) for w in original.weights)
    reference.set_weights([kernel[..., : 2 * n], bias[: 2 * n]])
    np.testing.assert_allclose(have, _numpy(reference(before)), atol=1e-5)


@pytest.mark.parametrize("rate", [1.0, 0.5])
def test_cut_width_holds_depthwise_and_layer_scale_and_equals_the_sliced_model(rate):
    x, y = _data()
    sliced = keras_slicing.slice_model(plain_models.convnext_block(), data=(x, y))
    sub = keras_slicing.extract_submodel(sliced, rate)
    assert type(sub.get_layer("depthwise")) is K.DepthwiseConv2D
    assert type(sub.get_layer("layer_scale")) is keras_internals.LayerScale
    np.testing.assert_allclose(_numpy(sub(x)), _numpy(sliced.at_rate(rate)(x)), atol=1e-5)
    assert sub.count_params() == keras_slicing.model_cost(sliced, rate)["params"]


def test_grouped_conv_with_several_channels_per_group_stays_full_and_says_why():
    x = keras.Input((8, 8, 16))
    h = K.Conv2D(16, 3, groups=4, name="grouped")(x)
    h = K.Conv2D(8, 1, name="after")(h)
    y = K.Dense(3, name="logits")(K.GlobalAveragePooling2D()(h))
    sliced = keras_slicing.slice_model(plain_models.randomize(keras.Model(x, y)))
    assert "grouped" in sliced.slicing_plan.full_layers
    assert "groups=4" in sliced.slicing_plan.full_layers["grouped"]
    assert isinstance(sliced.get_layer("after"), layers.SlicedConv2D)
