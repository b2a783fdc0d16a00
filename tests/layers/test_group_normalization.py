import keras
import numpy as np
import pytest

from keras_slicing.layers import SlicedGroupNormalization
from keras_slicing.rates import active_width
from tests.layers import harness


def _built_layer(groups=8, channels=32):
    layer = SlicedGroupNormalization(
        groups=groups, gamma_initializer="random_normal", beta_initializer="random_normal"
    )
    layer.build((None, 4, 4, channels))
    return layer


def _inputs_at(rate):
    n = active_width(32, rate, 8)
    return (np.random.default_rng(0).normal(2.0, 3.0, size=(3, 4, 4, n)).astype("float32"),)


CASES = {
    f"groups_{groups}": harness.LayerCase(
        lambda groups=groups: _built_layer(groups), _inputs_at,
        keras.layers.GroupNormalization, rates=(1.0, 0.75, 0.5, 0.125),
    )
    for groups in (8, 16)
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("check", harness.CHECKS, ids=harness.check_id)
def test_sliced_layer_contract(check, case, tmp_path):
    check(CASES[case], tmp_path)


def test_statistics_of_a_group_do_not_depend_on_the_rate():
    layer = _built_layer()
    x = np.random.default_rng(1).normal(size=(2, 4, 4, 32)).astype("float32")
    full = keras.ops.convert_to_numpy(layer(x, 1.0))
    half = keras.ops.convert_to_numpy(layer(x[..., :16], 0.5))
    np.testing.assert_allclose(half, full[..., :16], atol=1e-6)


def test_groups_not_multiple_of_slice_groups_is_rejected():
    with pytest.raises(ValueError, match=r"groups=4 is not a multiple of slice_groups=8"):
        SlicedGroupNormalization(groups=4)


def test_channels_first_axis_is_rejected():
    with pytest.raises(ValueError, match="axis=1"):
        SlicedGroupNormalization(groups=8, axis=1)
