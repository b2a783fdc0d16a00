"""slice_model and batch norm: the narrow widths' statistics are never
silently the full network's."""

import keras
import numpy as np

import keras_slicing
from keras_slicing.layers import SlicedBatchNormalization
from tests.conversion import plain_models


def _norm(sliced, name):
    layer = sliced.get_layer(name)
    assert isinstance(layer, SlicedBatchNormalization)
    return layer


def test_without_data_the_narrow_rows_are_stale_and_full_width_is_not():
    sliced = keras_slicing.slice_model(plain_models.sequential_cnn(), rewire=None)
    assert _norm(sliced, "stem_bn").stale_rates == (0.75, 0.5, 0.25)


def test_with_data_the_narrow_rows_are_the_data_moments_and_full_width_unchanged():
    plain = plain_models.sequential_cnn()
    x = np.random.default_rng(3).random((48, 8, 8, 1)).astype("float32")
    sliced = keras_slicing.slice_model(plain, rewire=None, data=(x, np.zeros(48)))
    norm = _norm(sliced, "stem_bn")
    assert norm.stale_rates == ()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(sliced(x)), keras.ops.convert_to_numpy(plain(x)),
        rtol=1e-5, atol=1e-5,
    )
    # The stem's convolution reads the data: its outputs at rate 0.5 are
    # the first half of the plain convolution's channels.
    stem = keras.ops.convert_to_numpy(plain.get_layer("stem")(x)).astype("float64")
    half = stem[..., : stem.shape[-1] // 2]
    row = norm.row_of(0.5)
    np.testing.assert_allclose(
        norm.moving_mean.numpy()[row, : half.shape[-1]], half.mean((0, 1, 2)), atol=1e-5
    )
    np.testing.assert_allclose(
        norm.moving_variance.numpy()[row, : half.shape[-1]], half.var((0, 1, 2)),
        rtol=1e-4,
    )
