import keras
import numpy as np
import pytest

from keras_slicing import check_model
from keras_slicing import rate_input
from keras_slicing.layers import SlicedConv2D
from keras_slicing.layers import SlicedDense
from keras_slicing.layers import SlicedFlatten


def test_active_channels_form_a_prefix_of_the_flattened_vector():
    x = np.random.default_rng(0).normal(size=(2, 3, 3, 8)).astype("float32")
    full = keras.ops.convert_to_numpy(SlicedFlatten()(x))
    half = keras.ops.convert_to_numpy(SlicedFlatten()(x[..., :4]))
    np.testing.assert_array_equal(half, full[:, : 4 * 9])


def test_plain_flatten_of_sliced_conv_into_sliced_dense_is_rejected():
    x = keras.Input((6, 6, 3))
    rate = rate_input()
    h = SlicedConv2D(16, 3, slice_input=False)(x, rate)
    h = keras.layers.Activation("relu")(h)
    h = keras.layers.Flatten()(h)
    y = SlicedDense(16, slice_output=False)(h, rate)
    with pytest.raises(ValueError, match="SlicedFlatten"):
        check_model(keras.Model([x, rate], y))


def test_plain_flatten_of_unsliced_conv_is_accepted():
    x = keras.Input((6, 6, 3))
    rate = rate_input()
    h = SlicedConv2D(16, 3, slice_input=False, slice_output=False)(x, rate)
    h = keras.layers.Flatten()(h)
    y = SlicedDense(16, slice_output=False)(h, rate)
    check_model(keras.Model([x, rate], y))


def test_order_does_not_depend_on_the_global_image_data_format():
    previous = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    try:
        flat = SlicedFlatten()(np.arange(8.0).reshape(1, 2, 2, 2))
    finally:
        keras.config.set_image_data_format(previous)
    np.testing.assert_array_equal(flat[0], [0, 2, 4, 6, 1, 3, 5, 7])
