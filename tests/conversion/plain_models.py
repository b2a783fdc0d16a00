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


def application_with_batch_statistics(name, shape, images):
    """`keras.applications.<name>` (random weights, 10 logits) whose
    batch-norm statistics are those of the batch `images`.

    Keras' initial statistics (mean 0, variance 1) let activations fade
    through the depth of these networks (MobileNetV3Small's logits are
    about 1e-11), which would make any difference pass unseen; statistics
    of a batch keep them of order one. The benchmarks use it too.
    """
    model = getattr(keras.applications, name)(
        input_shape=shape, weights=None, classes=10, classifier_activation=None
    )
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    model(images, training=True)
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


def text_classifier():
    """Embedding, LSTM and GRU over token ids."""
    tokens = keras.Input((12,), dtype="int32", name="tokens")
    h = K.Embedding(50, 16, name="embed")(tokens)
    h = K.LSTM(16, return_sequences=True, name="lstm")(h)
    h = K.GRU(24, name="gru")(h)
    y = K.Dense(4, name="logits")(h)
    return randomize(keras.Model(tokens, y, name="text_classifier"), seed=2)


def transformer_block():
    """A pre-norm Transformer block: attention heads, layer norms, MLP."""
    tokens = keras.Input((10,), dtype="int32", name="tokens")
    h = K.Embedding(40, 32, name="embed")(tokens)
    a = K.LayerNormalization(name="ln1")(h)
    a = K.MultiHeadAttention(num_heads=4, key_dim=8, name="attention")(a, a)
    h = K.Add(name="residual1")([h, a])
    m = K.LayerNormalization(name="ln2")(h)
    m = K.Dense(64, activation="gelu", name="mlp_in")(m)
    m = K.Dense(32, name="mlp_out")(m)
    h = h + m
    h = K.LayerNormalization(name="ln_final")(h)
    h = K.GlobalAveragePooling1D()(h)
    y = K.Dense(3, name="logits")(h)
    model = keras.Model(tokens, y, name="transformer_block")
    rng = np.random.default_rng(3)
    for variable in model.weights:  # small weights: attention stays smooth
        variable.assign(rng.normal(0.0, 0.2, variable.shape).astype("float32"))
    return model


def separable_cnn():
    """Xception's entry flow in small: separable convolutions (depth
    multiplier 2), a strided 1x1 shortcut, and a separable convolution
    reading a channel concatenation."""
    x = keras.Input((12, 12, 3), name="image")
    h = K.SeparableConv2D(16, 3, padding="same", depth_multiplier=2, name="stem")(x)
    h = K.BatchNormalization(name="stem_bn")(h)
    h = K.ReLU()(h)
    shortcut = K.Conv2D(32, 1, strides=2, name="shortcut")(h)
    h = K.SeparableConv2D(32, 3, padding="same", name="sep1")(h)
    h = K.BatchNormalization(name="sep1_bn")(h)
    h = K.ReLU()(h)
    h = K.SeparableConv2D(32, 3, padding="same", depth_multiplier=2, name="sep2")(h)
    h = K.MaxPooling2D(3, strides=2, padding="same")(h)
    h = K.Add(name="residual")([h, shortcut])
    branch = K.SeparableConv2D(16, 3, padding="same", name="branch")(h)
    h = K.Concatenate(name="join")([h, branch])
    h = K.SeparableConv2D(24, 3, padding="same", activation="relu", name="after_join")(h)
    h = K.GlobalAveragePooling2D()(h)
    y = K.Dense(5, name="logits")(h)
    return randomize(keras.Model(x, y, name="separable_cnn"))


def separable_1d():
    """SeparableConv1D over a sequence of features."""
    x = keras.Input((20, 4), name="signal")
    h = K.SeparableConv1D(16, 5, padding="same", activation="relu", name="sep1")(x)
    h = K.SeparableConv1D(24, 3, strides=2, depth_multiplier=3, name="sep2")(h)
    h = K.LayerNormalization(name="ln")(h)
    h = K.GlobalAveragePooling1D()(h)
    y = K.Dense(3, name="logits")(h)
    return randomize(keras.Model(x, y, name="separable_1d"))


def convnext_block():
    """ConvNeXt's block: a depthwise convolution written as a grouped
    `Conv2D` (one input channel per group, here two outputs each), layer
    norms, an inverted MLP and a layer scale on the residual branch."""
    from keras_slicing.keras_internals import LayerScale

    x = keras.Input((8, 8, 3), name="image")
    h = K.Conv2D(16, 2, strides=2, name="stem")(x)
    h = K.LayerNormalization(epsilon=1e-6, name="stem_ln")(h)
    skip = h
    b = K.Conv2D(32, 3, padding="same", groups=16, name="depthwise")(h)
    b = K.LayerNormalization(epsilon=1e-6, name="ln")(b)
    b = K.Dense(64, activation="gelu", name="mlp_in")(b)
    b = K.Dense(16, name="mlp_out")(b)
    b = LayerScale(1e-6, 16, name="layer_scale")(b)
    h = K.Add(name="residual")([skip, b])
    h = K.GlobalAveragePooling2D()(h)
    y = K.Dense(4, name="logits")(h)
    return randomize(keras.Model(x, y, name="convnext_block"))
