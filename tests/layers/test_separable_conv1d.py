import keras
import numpy as np
import pytest

from keras_slicing.layers import SlicedSeparableConv1D
from keras_slicing.rates import active_width
from tests.layers import harness


def _built_layer():
    layer = SlicedSeparableConv1D(
        32, 3, padding="same", depth_multiplier=3, bias_initializer="random_normal"
    )
    layer.build((None, 12, 16))
    return layer


def _inputs_at(rate):
    n_in = active_width(16, rate, 8)
    return (np.random.default_rng(0).normal(size=(2, 12, n_in)).astype("float32"),)


CASE = harness.LayerCase(
    _built_layer, _inputs_at, keras.layers.SeparableConv1D, rates=(1.0, 0.5, 0.25)
)


@pytest.mark.parametrize("check", harness.CHECKS, ids=harness.check_id)
def test_sliced_layer_contract(check, tmp_path):
    check(CASE, tmp_path)
