"""Small plain Keras models of every layer and merge kind, random weights."""

import keras
import numpy as np

K = keras.layers


def randomize(model, seed=1):
    """Random weights everywhere, positive variances: no layer is trivial."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        value = rng.normal(0.0, 0.5, variable.shape)
        if "variance" in variable.path:
            value = np.abs(value) + 0.5
        variable.assign(value.astype(variable.dtype))
    return model


def sequential_cnn(random=True):
    """Conv/BN/GN/Flatten/Dense, the digits CNN shape."""
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        K.Conv2D(16, 3, padding="same", name="stem"),
        K.BatchNormalization(name="stem_bn"),
        K.ReLU(),
        K.Conv2D(32, 3, name="conv"),
        K.GroupNormalization(8, name="gn"),
        K.Activation("relu"),
        K.MaxPooling2D(),
        K.Flatten(name="flatten"),
        K.Dense(16, activation="relu", name="hidden"),
        K.Dropout(0.2),
        K.Dense(10, name="logits"),
    ], name="sequential_cnn")
    return randomize(model) if random else model


def residual_cnn():
    """Residual adds (a layer and `x + y`), depthwise, squeeze-excite."""
    x = keras.Input((8, 8, 3), name="image")
    h = K.Conv2D(16, 3, padding="same", name="stem")(x)
    h = K.BatchNormalization(name="stem_bn")(h)
    h = K.ReLU(6.0)(h)
    skip = h
    h = K.DepthwiseConv2D(3, padding="same", name="depthwise")(h)
    h = K.BatchNormalization(name="dw_bn")(h)
    h = K.Activation("swish")(h)
    gate = K.GlobalAveragePooling2D(keepdims=True)(h)
    gate = K.Conv2D(8, 1, activation="relu", name="se_reduce")(gate)
    gate = K.Conv2D(16, 1, activation="sigmoid", name="se_expand")(gate)
    h = K.Multiply(name="se_gate")([h, gate])
    h = K.Conv2D(16, 1, name="project")(h)
    h = K.Add(name="residual")([h, skip])
    h2 = K.Conv2D(16, 3, padding="same", name="conv2")(h)
    h = keras.ops.relu(h2 + h * 0.5)
    h = K.Conv2D(24, 1, name="expand")(h)
    h = K.GlobalAveragePooling2D()(h)
    y = K.Dense(5, name="logits")(h)
    return randomize(keras.Model(x, y, name="residual_cnn"))


def mlp():
    return randomize(keras.Sequential([
        keras.Input((12,)),
        K.Dense(32, activation="relu", name="fc1"),
        K.Dense(16, activation="tanh", name="fc2"),
        K.Dense(3, name="out"),
    ], name="mlp"))
