import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_slicing.layers import SlicedGroupNormalization


def _built_layer(groups=8, channels=32):
    layer = SlicedGroupNormalization(
        groups=groups, gamma_initializer="random_normal", beta_initializer="random_normal"
    )
    layer.build((None, 4, 4, channels))
    return layer


@pytest.mark.parametrize("n", [32, 24, 16, 4])
@pytest.mark.parametrize("groups", [8, 16])
def test_active_channels_match_plain_group_norm(n, groups):
    layer = _built_layer(groups)
    gamma, beta = layer.get_weights()
    per_group = 32 // groups
    plain = keras.layers.GroupNormalization(groups=n // per_group)
    plain.build((None, 4, 4, n))
    plain.set_weights([gamma[:n], beta[:n]])
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(3, 4, 4, n)).astype("float32")
    np.testing.assert_allclose(layer(x, n / 32), plain(x), atol=1e-5)
    run = tf.function(lambda x, r: layer(x, r))
    np.testing.assert_allclose(run(x, tf.fill([3], n / 32)), plain(x), atol=1e-5)


def test_statistics_of_a_group_do_not_depend_on_the_rate():
    layer = _built_layer()
    x = np.random.default_rng(1).normal(size=(2, 4, 4, 32)).astype("float32")
    full = keras.ops.convert_to_numpy(layer(x, 1.0))
    half = keras.ops.convert_to_numpy(layer(x[..., :16], 0.5))
    np.testing.assert_allclose(half, full[..., :16], atol=1e-6)


def test_full_rate_equals_parent_exactly():
    layer = _built_layer()
    plain = keras.layers.GroupNormalization(groups=8)
    plain.build((None, 4, 4, 32))
    plain.set_weights(layer.get_weights())
    x = tf.random.normal((2, 4, 4, 32), seed=3)
    np.testing.assert_array_equal(layer(x, 1.0), plain(x))


def test_groups_not_multiple_of_slice_groups_is_rejected():
    with pytest.raises(ValueError, match=r"groups=4 is not a multiple of slice_groups=8"):
        SlicedGroupNormalization(groups=4)


def test_channels_first_axis_is_rejected():
    with pytest.raises(ValueError, match="axis=1"):
        SlicedGroupNormalization(groups=8, axis=1)
