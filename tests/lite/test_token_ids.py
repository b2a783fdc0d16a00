"""Bundles whose input is token ids (an embedding reads them), on the edge."""

import keras
import numpy as np
import pytest

import keras_slicing
import keras_slicing_lite as lite

RATES = (1.0, 0.5)


@pytest.fixture(scope="module")
def token_model():
    keras.utils.set_random_seed(0)
    ids = keras.Input((6,), dtype="int32", name="ids")
    rate = keras_slicing.rate_input()
    h = keras_slicing.layers.SlicedEmbedding(20, 16)(ids, rate)
    h = keras.layers.GlobalAveragePooling1D()(h)
    y = keras_slicing.layers.SlicedDense(5, slice_output=False)(h, rate)
    return keras.Model([ids, rate], y)


@pytest.fixture(scope="module")
def token_bundle(token_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("bundles") / "tokens"
    keras_slicing.export_tflite(token_model, path, rates=RATES)
    return lite.load_bundle(path, num_threads=1)


def test_int64_ids_are_cast_and_match_keras(token_model, token_bundle):
    ids = np.random.default_rng(0).integers(0, 20, (4, 6))  # numpy's int64
    assert token_bundle.input_dtype == "int32"
    for rate in RATES:
        expected = keras.ops.convert_to_numpy(
            token_model([ids.astype("int32"), np.full(4, rate, "float32")])
        )
        np.testing.assert_allclose(
            token_bundle.predict(ids, rate=rate), expected, atol=1e-5
        )


def test_ids_beyond_the_input_dtype_are_refused(token_bundle):
    with pytest.raises(ValueError, match="ids must fit int32"):
        token_bundle.predict(np.full((1, 6), 2**40, np.int64), rate=1.0)


def test_profiling_feeds_valid_ids(token_bundle):
    profile = token_bundle.profile(batch_sizes=(1,), repeats=2, cache=False)
    assert all(profile.latency_ms(rate, 1) > 0 for rate in RATES)
