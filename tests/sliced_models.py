"""Small sliced models shared by the tests."""

import keras
import numpy as np

from keras_slicing import rate_input
from keras_slicing import layers


def small_cnn(input_shape=(8, 8, 1), classes=10, bn_rates=(1.0, 0.75, 0.5, 0.25)):
    """Conv-GN-depthwise-BN-conv-flatten-dense: every sliced layer once."""
    x = keras.Input(input_shape, name="image")
    rate = rate_input()
    h = layers.SlicedConv2D(16, 3, padding="same", slice_input=False)(x, rate)
    h = layers.SlicedGroupNormalization(groups=8)(h, rate)
    h = keras.layers.Activation("relu")(h)
    h = layers.SlicedDepthwiseConv2D(3, padding="same")(h, rate)
    h = layers.SlicedBatchNormalization(rates=bn_rates)(h, rate)
    h = keras.layers.ReLU()(h)
    h = layers.SlicedConv2D(32, 3, strides=2, padding="same", activation="relu")(h, rate)
    h = layers.SlicedFlatten()(h)
    h = layers.SlicedDense(32, activation="relu")(h, rate)
    y = layers.SlicedDense(classes, slice_output=False, name="logits")(h, rate)
    return keras.Model([x, rate], y, name="small_cnn")


def small_mlp(features=64, classes=10):
    x = keras.Input((features,), name="features")
    rate = rate_input()
    h = layers.SlicedDense(64, activation="relu", slice_input=False)(x, rate)
    h = layers.SlicedDense(32, activation="relu")(h, rate)
    y = layers.SlicedDense(classes, slice_output=False)(h, rate)
    return keras.Model([x, rate], y, name="small_mlp")


def randomize_weights(model, seed=0):
    """Random weights everywhere (positive variances), so no rate is trivial."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        values = rng.normal(0.0, 0.3, size=variable.shape)
        if "variance" in variable.path:
            values = np.abs(values) + 0.5
        variable.assign(values.astype(variable.dtype))


def digits_split():
    """scikit-learn's digits as 8x8x1 images: the first 1,437 train, the rest test."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., None]
    return x[:1437], data.target[:1437], x[1437:], data.target[1437:]
