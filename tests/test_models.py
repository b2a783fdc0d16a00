"""End-to-end behaviour of functional models made of sliced layers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_slicing import layers
from keras_slicing.rates import DEFAULT_RATES
from tests.sliced_models import masked_reference
from tests.sliced_models import randomize_weights
from tests.sliced_models import small_cnn
from tests.sliced_models import small_mlp

RATES = DEFAULT_RATES + (0.3,)
@pytest.mark.parametrize("rate", RATES)
def test_cnn_equals_full_width_model_with_inactive_channels_zeroed(rate):
    model = small_cnn(bn_rates=None)
    randomize_weights(model)
    x = np.random.default_rng(1).normal(size=(3, 8, 8, 1)).astype("float32")
    got = model.predict([x, np.full(3, rate)], verbose=0)
    np.testing.assert_allclose(got, masked_reference(model, x, rate), atol=1e-4)


@pytest.mark.parametrize("rate", RATES)
def test_mlp_equals_full_width_model_with_inactive_units_zeroed(rate):
    model = small_mlp()
    randomize_weights(model)
    x = np.random.default_rng(2).normal(size=(5, 64)).astype("float32")
    got = model([x, np.full(5, rate)])
    np.testing.assert_allclose(got, masked_reference(model, x, rate), atol=1e-4)


def test_one_graph_serves_every_rate_without_retracing():
    model = small_cnn()
    run = tf.function(lambda x, r: model([x, r]))
    x = tf.random.normal((2, 8, 8, 1), seed=0)
    for rate in DEFAULT_RATES:
        out = run(x, tf.fill([2], rate))
        np.testing.assert_allclose(out, model([x, tf.fill([2], rate)]), atol=1e-5)
    assert run.experimental_get_tracing_count() == 1


def test_keras_file_round_trip_is_bit_exact_at_every_rate(tmp_path):
    model = small_cnn()
    randomize_weights(model)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = np.random.default_rng(3).normal(size=(4, 8, 8, 1)).astype("float32")
    for rate in DEFAULT_RATES:
        feed = [x, np.full(4, rate, "float32")]
        np.testing.assert_array_equal(
            loaded.predict(feed, verbose=0), model.predict(feed, verbose=0)
        )


def test_training_a_fixed_width_reduces_the_loss():
    model = small_mlp(features=16, classes=3)
    model.compile(keras.optimizers.Adam(0.02), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(4)
    x = rng.normal(size=(128, 16)).astype("float32")
    y = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0)
    feed = [x, np.full(128, 0.5, "float32")]
    history = model.fit(feed, y, epochs=20, batch_size=32, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]


def test_xla_refuses_a_tensor_rate_with_a_clear_message():
    model = small_mlp()
    run = tf.function(lambda x, r: model([x, r]), jit_compile=True)
    with pytest.raises(ValueError, match="XLA"):
        run(tf.ones((2, 64)), tf.fill([2], 0.5))


def test_xla_compiles_a_python_rate():
    layer = layers.SlicedConv2D(16, 3, slice_input=False)
    x = tf.random.normal((2, 6, 6, 3), seed=5)
    run = tf.function(lambda x: layer(x, 0.5), jit_compile=True)
    np.testing.assert_allclose(run(x), layer(x, 0.5), atol=1e-5)
