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
