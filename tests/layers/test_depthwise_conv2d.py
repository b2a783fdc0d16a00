import keras
import numpy as np
import pytest

from keras_slicing.layers import SlicedDepthwiseConv2D
from keras_slicing.rates import active_width
from tests.layers import harness


def _built_layer(channels=16, depth_multiplier=2):
    layer = SlicedDepthwiseConv2D(
        3, padding="same", depth_multiplier=depth_multiplier,
        bias_initializer="random_normal",
    )
    layer.build((None, 6, 6, channels))
    return layer


def _inputs_at(rate):
    n_in = active_width(16, rate, 8)
    return (np.random.default_rng(0).normal(size=(2, 6, 6, n_in)).astype("float32"),)


CASE = harness.LayerCase(
    _built_layer, _inputs_at, keras.layers.DepthwiseConv2D, rates=(1.0, 0.75, 0.5, 0.125)
)


@pytest.mark.parametrize("check", harness.CHECKS, ids=harness.check_id)
def test_sliced_layer_contract(check, tmp_path):
    check(CASE, tmp_path)


def test_rate_is_validated_even_though_width_follows_input():
    layer = _built_layer()
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        layer(np.ones((1, 6, 6, 8), "float32"), 1.2)


def test_channels_not_divisible_by_slice_groups_is_rejected():
    layer = SlicedDepthwiseConv2D(3)
    with pytest.raises(ValueError, match="input channels=12.*slice_groups=8"):
        layer.build((None, 6, 6, 12))
