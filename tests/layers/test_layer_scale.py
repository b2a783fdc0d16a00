import numpy as np
import pytest

from keras_slicing import keras_internals
from keras_slicing.layers import SlicedLayerScale
from keras_slicing.rates import active_width
from tests.layers import harness


def _built_layer():
    layer = SlicedLayerScale(0.5, 16)
    layer.build((None, 4, 4, 16))
    layer.gamma.assign(np.random.default_rng(1).normal(size=16).astype("float32"))
    return layer


def _inputs_at(rate):
    n = active_width(16, rate, 8)
    return (np.random.default_rng(0).normal(size=(2, 4, 4, n)).astype("float32"),)


CASE = harness.LayerCase(_built_layer, _inputs_at, keras_internals.LayerScale)


@pytest.mark.parametrize("check", harness.CHECKS, ids=harness.check_id)
def test_sliced_layer_contract(check, tmp_path):
    check(CASE, tmp_path)


def test_channels_not_divisible_by_slice_groups_is_rejected():
    with pytest.raises(ValueError, match="projection_dim=12.*slice_groups=8"):
        SlicedLayerScale(1e-6, 12)
