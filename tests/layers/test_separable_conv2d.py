import keras
import numpy as np
import pytest

from keras_slicing.layers import SlicedSeparableConv2D
from keras_slicing.rates import active_width
from tests.layers import harness


def _built_layer(in_channels=16, filters=32, **kwargs):
    layer = SlicedSeparableConv2D(
        filters, 3, padding="same", strides=2, depth_multiplier=2,
        bias_initializer="random_normal", **kwargs
    )
    layer.build((None, 9, 9, in_channels))
    return layer


def _inputs_at(rate):
    n_in = active_width(16, rate, 8)
    return (np.random.default_rng(0).normal(size=(2, 9, 9, n_in)).astype("float32"),)


CASE = harness.LayerCase(
    _built_layer, _inputs_at, keras.layers.SeparableConv2D,
    rates=(1.0, 0.75, 0.5, 0.3, 0.25),
)


@pytest.mark.parametrize("check", harness.CHECKS, ids=harness.check_id)
def test_sliced_layer_contract(check, tmp_path):
    check(CASE, tmp_path)


def test_narrow_width_is_the_full_layer_with_inactive_channels_zeroed():
    layer = _built_layer()
    x = _inputs_at(1.0)[0]
    rate = 0.5
    n_in, n_out = active_width(16, rate, 8), active_width(32, rate, 8)
    zeroed = x.copy()
    zeroed[..., n_in:] = 0.0
    full = keras.ops.convert_to_numpy(layer(zeroed, 1.0))[..., :n_out]
    narrow = keras.ops.convert_to_numpy(layer(x[..., :n_in], rate))
    np.testing.assert_allclose(narrow, full, rtol=1e-5, atol=1e-5)


def test_unsliced_input_and_output_for_first_and_last_layers():
    first = SlicedSeparableConv2D(16, 3, slice_input=False)
    assert first(np.ones((1, 5, 5, 3), "float32"), 0.5).shape == (1, 3, 3, 8)
    last = SlicedSeparableConv2D(10, 1, slice_output=False)
    last.build((None, 5, 5, 16))
    assert last(np.ones((1, 5, 5, 4), "float32"), 0.25).shape == (1, 5, 5, 10)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"data_format": "channels_first"}, "channels_last"), ({}, "filters=12")],
)
def test_unsupported_options_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SlicedSeparableConv2D(12 if not kwargs else 16, 3, **kwargs)
