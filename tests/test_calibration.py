import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_slicing
from keras_slicing import calibrate_batchnorm
from keras_slicing import layers
from keras_slicing import rate_input


def _conv_bn_model(bn_rates=(1.0, 0.5)):
    x = keras.Input((5, 5, 2))
    rate = rate_input()
    h = layers.SlicedConv2D(8, 3, slice_input=False, slice_groups=4)(x, rate)
    bn = layers.SlicedBatchNormalization(rates=bn_rates, slice_groups=4)
    y = bn(h, rate)
    model = keras.Model([x, rate], y)
    # Its output is the sliced feature map the calibration reads.
    keras_slicing.check_model(model, allow_sliced_outputs=True)
    return model, bn


def test_calibration_stores_exact_population_statistics_per_rate():
    model, bn = _conv_bn_model()
    data = np.random.default_rng(0).normal(1.0, 2.0, size=(50, 5, 5, 2)).astype("float32")
    assert calibrate_batchnorm(model, data, batch_size=16) == (1.0, 0.5)
    conv = model.layers[2]
    for rate, row in [(1.0, 0), (0.5, 1)]:
        features = keras.ops.convert_to_numpy(conv(data, rate)).astype("float64")
        n = features.shape[-1]
        mean, variance = bn.get_weights()[2:]
        np.testing.assert_allclose(mean[row, :n], features.mean((0, 1, 2)), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(variance[row, :n], features.var((0, 1, 2)), rtol=1e-4)


def test_calibration_accepts_a_dataset_of_pairs():
    model, bn = _conv_bn_model()
    data = np.random.default_rng(1).normal(size=(20, 5, 5, 2)).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices((data, np.zeros(20))).batch(7)
    calibrate_batchnorm(model, dataset, rates=[0.5])
    features = keras.ops.convert_to_numpy(model.layers[2](data, 0.5))
    np.testing.assert_allclose(bn.get_weights()[2][1, :4], features.mean((0, 1, 2)), atol=1e-5)
    np.testing.assert_array_equal(bn.get_weights()[2][0], 0.0)


def test_calibrated_model_normalizes_its_data_at_inference():
    model, _ = _conv_bn_model()
    data = np.random.default_rng(2).normal(3.0, 1.0, size=(64, 5, 5, 2)).astype("float32")
    calibrate_batchnorm(model, data)
    out = model.predict([data, np.full(64, 0.5)], verbose=0)
    np.testing.assert_allclose(out.mean((0, 1, 2)), 0.0, atol=1e-3)


def test_undeclared_rate_is_rejected_before_anything_changes():
    model, bn = _conv_bn_model()
    before = bn.get_weights()
    with pytest.raises(ValueError, match=r"Declared rates: \[1, 0.5\]"):
        calibrate_batchnorm(model, np.ones((4, 5, 5, 2), "float32"), rates=[0.25])
    for old, new in zip(before, bn.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_model_without_batchnorm_is_rejected():
    x = keras.Input((4,))
    rate = rate_input()
    model = keras.Model([x, rate], layers.SlicedDense(8, slice_input=False)(x, rate))
    with pytest.raises(ValueError, match="no SlicedBatchNormalization"):
        calibrate_batchnorm(model, np.ones((2, 4)))


def test_empty_calibration_data_is_rejected():
    model, _ = _conv_bn_model()
    with pytest.raises(ValueError, match="no batch"):
        calibrate_batchnorm(model, np.zeros((0, 5, 5, 2), "float32"))



def test_calibration_ignores_the_labels_of_an_x_y_tuple():
    model, bn = _conv_bn_model()
    data = np.random.default_rng(3).normal(size=(20, 5, 5, 2)).astype("float32")
    calibrate_batchnorm(model, (data, np.arange(20) % 3), rates=[0.5], batch_size=8)
    features = keras.ops.convert_to_numpy(model.layers[2](data, 0.5)).astype("float64")
    np.testing.assert_allclose(bn.get_weights()[2][1, :4], features.mean((0, 1, 2)), atol=1e-5)
    np.testing.assert_allclose(bn.get_weights()[3][1, :4], features.var((0, 1, 2)), rtol=1e-4)


# ------------------------------------------------- statistics after fit

from keras_slicing import SlicingModel  # noqa: E402
from keras_slicing import export_tflite  # noqa: E402
from keras_slicing import extract_submodel  # noqa: E402
from keras_slicing.calibration import StaleStatisticsWarning  # noqa: E402

RATES = (1.0, 0.5, 0.25)
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _bn_cnn(seed=0):
    """conv-BN-relu twice, GAP, dense: the issue's batch-norm CNN, small."""
    keras.utils.set_random_seed(seed)
    x = keras.Input((8, 8, 1))
    rate = rate_input()
    h = x
    for i, filters in enumerate((16, 32)):
        h = layers.SlicedConv2D(
            filters, 3, padding="same", use_bias=False, slice_input=i > 0
        )(h, rate)
        h = layers.SlicedBatchNormalization(rates=RATES)(h, rate)
        h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    y = layers.SlicedDense(10, slice_output=False)(h, rate)
    model = SlicingModel([x, rate], y, rates=RATES, seed=seed)
    model.compile(keras.optimizers.Adam(3e-3), LOSS, metrics=["accuracy"])
    return model


def _norms(model):
    return [l for l in model.layers if isinstance(l, layers.SlicedBatchNormalization)]


def _accuracy(model, x, y):
    return {
        rate: float(np.mean(
            np.argmax(model.predict([x, np.full(len(x), rate)], verbose=0), -1) == y
        ))
        for rate in RATES
    }


class _KeepMovingAverages(keras.callbacks.Callback):
    """The statistics as training left them, before fit recalibrates."""

    def on_train_end(self, logs=None):
        self.values = [l.get_weights() for l in _norms(self.model)]


def test_fit_ends_calibrated_far_above_the_moving_averages(digits):
    x_train, y_train, x_test, y_test = digits
    x_train, y_train = x_train[:768], y_train[:768]
    model = _bn_cnn()
    kept = _KeepMovingAverages()
    model.fit(x_train, y_train, batch_size=64, epochs=5, verbose=0, callbacks=[kept])
    assert all(layer.stale_rates == () for layer in _norms(model))
    after_fit = _accuracy(model, x_test, y_test)

    # An explicit calibration on the same examples gives the same model.
    calibrate_batchnorm(model, x_train, batch_size=64)
    assert _accuracy(model, x_test, y_test) == after_fit
    for layer, values in zip(_norms(model), kept.values):
        layer.set_weights(values)
        layer.mark_stale()
    with pytest.warns(StaleStatisticsWarning):
        moving = _accuracy(model, x_test, y_test)
    assert after_fit[1.0] > 0.6, after_fit
    for rate in RATES:
        assert after_fit[rate] > moving[rate] + 0.15, (after_fit, moving)


@pytest.fixture(scope="module")
def digits():
    from tests.sliced_models import digits_split

    return digits_split()


def test_fit_without_calibration_leaves_stale_rows_that_warn_until_calibrated():
    model = _bn_cnn()
    x = np.random.default_rng(4).normal(size=(32, 8, 8, 1)).astype("float32")
    y = np.arange(32) % 10
    model.fit(x, y, epochs=1, verbose=0, calibrate_batchnorm=False)
    assert all(layer.stale_rates == RATES for layer in _norms(model))
    with pytest.warns(StaleStatisticsWarning, match=r"rate 1: .*calibrate_batchnorm"):
        model.evaluate(x, y, verbose=0)
    with pytest.warns(StaleStatisticsWarning, match=r"rate 0.5: "):
        model.predict([x, np.full(32, 0.5)], verbose=0)
    with pytest.warns(StaleStatisticsWarning, match=r"rate 0.25: "):
        model.at_rate(0.25)
    calibrate_batchnorm(model, x, rates=[0.5])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.evaluate_rates(x, y, rates=[0.5])
    with pytest.warns(StaleStatisticsWarning):
        model.evaluate(x, y, verbose=0)  # full width was not recalibrated


def test_a_training_step_makes_extraction_and_export_refuse_until_calibrated(tmp_path):
    model = _bn_cnn()
    x = np.random.default_rng(5).normal(size=(16, 8, 8, 1)).astype("float32")
    model.train_on_batch(x, np.arange(16) % 10)
    with pytest.raises(ValueError, match=r"extract_submodel: .*rate 0.5.*calibrate_batchnorm"):
        extract_submodel(model, 0.5)
    with pytest.raises(ValueError, match=r"export_tflite: .*calibrate_batchnorm"):
        export_tflite(model, tmp_path / "bundle", rates=[1.0, 0.5])
    assert not (tmp_path / "bundle").exists()
    calibrate_batchnorm(model, x)
    assert extract_submodel(model, 0.5) is not None


def test_stale_rows_are_saved_with_the_model(tmp_path):
    model = _bn_cnn()
    x = np.random.default_rng(6).normal(size=(16, 8, 8, 1)).astype("float32")
    model.train_on_batch(x, np.arange(16) % 10)
    calibrate_batchnorm(model, x, rates=[0.25])
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert [l.stale_rates for l in _norms(loaded)] == [(1.0, 0.5)] * 2
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def _first_norm_inputs(model, x, rate):
    """The first batch-norm layer's input (nothing normalizes before it)."""
    conv = model.layers[2]
    return keras.ops.convert_to_numpy(conv(x, rate)).astype("float64")


def test_fit_on_a_dataset_calibrates_from_its_first_batches():
    model = _bn_cnn()
    x = np.random.default_rng(7).normal(size=(40, 8, 8, 1)).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices((x, np.arange(40) % 10)).batch(8)
    model.fit(dataset, epochs=1, verbose=0, calibration_steps=2)
    first = _norms(model)[0]
    for rate in RATES:
        h = _first_norm_inputs(model, x[:16], rate)
        row, n = first.row_of(rate), h.shape[-1]
        np.testing.assert_allclose(
            first.moving_mean.numpy()[row, :n], h.mean((0, 1, 2)), atol=1e-5
        )
        np.testing.assert_allclose(
            first.moving_variance.numpy()[row, :n], h.var((0, 1, 2)), rtol=1e-4
        )


def test_fit_on_a_generator_calibrates_from_batches_it_yields_after_training():
    model = _bn_cnn()
    rng = np.random.default_rng(8)

    def generate():  # endless, as fit(steps_per_epoch=...) reads it
        while True:
            yield rng.normal(3.0, 1.0, size=(8, 8, 8, 1)).astype("float32"), np.arange(8)

    model.fit(generate(), steps_per_epoch=2, epochs=1, verbose=0, calibration_steps=2)
    first = _norms(model)[0]
    assert first.stale_rates == ()
    # Inputs of mean 3 give the first layer's inputs a mean the moving
    # averages (from 0, two steps) could not have reached.
    probe = rng.normal(3.0, 1.0, size=(256, 8, 8, 1)).astype("float32")
    h = _first_norm_inputs(model, probe, 1.0)
    np.testing.assert_allclose(
        first.moving_mean.numpy()[0], h.mean((0, 1, 2)), rtol=0.1, atol=0.05
    )


def test_calibration_steps_must_be_a_positive_integer():
    model = _bn_cnn()
    with pytest.raises(ValueError, match="calibration_steps=0"):
        model.fit(np.zeros((4, 8, 8, 1)), np.zeros(4), calibration_steps=0)


def test_calibration_after_a_concatenation_stores_the_moments_of_its_interleaved_channels():
    x = keras.Input((5, 5, 2))
    rate = rate_input()
    a = layers.SlicedConv2D(8, 3, padding="same", slice_input=False, slice_groups=4)
    b = layers.SlicedConv2D(4, 1, slice_input=False, slice_groups=4)
    h = layers.SlicedConcatenate(slice_groups=4)([a(x, rate), b(x, rate)], rate)
    bn = layers.SlicedBatchNormalization(rates=(1.0, 0.5), slice_groups=4)
    model = keras.Model([x, rate], bn(h, rate))
    keras_slicing.check_model(model, allow_sliced_outputs=True)
    data = np.random.default_rng(3).normal(1.0, 2.0, size=(40, 5, 5, 2)).astype("float32")
    calibrate_batchnorm(model, data, batch_size=16)
    for row, (r, k) in enumerate([(1.0, 4), (0.5, 2)]):
        fa = keras.ops.convert_to_numpy(a(data, r)).astype("float64")
        fb = keras.ops.convert_to_numpy(b(data, r)).astype("float64")
        # numpy: slice group j of the join is group j of a, then of b.
        joined = np.concatenate(
            [fa.reshape(*fa.shape[:-1], k, -1), fb.reshape(*fb.shape[:-1], k, -1)], -1
        ).reshape(*fa.shape[:-1], -1)
        n = joined.shape[-1]
        mean, variance = bn.get_weights()[2:]
        np.testing.assert_allclose(mean[row, :n], joined.mean((0, 1, 2)), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(variance[row, :n], joined.var((0, 1, 2)), rtol=1e-4)
