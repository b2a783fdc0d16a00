"""Small sliced models shared by the tests (backend-neutral)."""

import math

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


def small_bn_cnn(filters=8, bn_rates=(1.0, 0.5)):
    """Two conv-BN-ReLU stages and a dense head: two width groups."""
    x = keras.Input((6, 6, 2), name="image")
    rate = rate_input()
    h = layers.SlicedConv2D(
        filters, 3, padding="same", slice_input=False, slice_groups=4, name="conv1"
    )(x, rate)
    h = layers.SlicedBatchNormalization(rates=bn_rates, slice_groups=4, name="bn1")(
        h, rate
    )
    h = keras.layers.ReLU()(h)
    h = layers.SlicedConv2D(filters, 3, padding="same", slice_groups=4, name="conv2")(
        h, rate
    )
    h = layers.SlicedBatchNormalization(rates=bn_rates, slice_groups=4, name="bn2")(
        h, rate
    )
    h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    y = layers.SlicedDense(3, slice_output=False, name="head")(h, rate)
    return keras.Model([x, rate], y, name="small_bn_cnn")


def small_mlp(features=64, classes=10):
    x = keras.Input((features,), name="features")
    rate = rate_input()
    h = layers.SlicedDense(64, activation="relu", slice_input=False)(x, rate)
    h = layers.SlicedDense(32, activation="relu")(h, rate)
    y = layers.SlicedDense(classes, slice_output=False)(h, rate)
    return keras.Model([x, rate], y, name="small_mlp")


def randomize_weights(model, seed=0, std=0.3):
    """Random weights everywhere (positive variances), so no rate is trivial.

    Normal with standard deviation `std`; variances get 0.5 added to their
    absolute value. The benchmarks use it too.
    """
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        values = rng.normal(0.0, std, size=variable.shape)
        if "variance" in variable.path:
            values = np.abs(values) + 0.5
        variable.assign(values.astype(variable.dtype))


def digits_split():
    """scikit-learn's digits as 8x8x1 images: the first 1,437 train, the rest test."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., None]
    return x[:1437], data.target[:1437], x[1437:], data.target[1437:]


_SLICING_ARGS = ("slice_groups", "slice_input", "slice_output", "rates")
_PLAIN = [
    (layers.SlicedDense, keras.layers.Dense),
    (layers.SlicedConv2D, keras.layers.Conv2D),
    (layers.SlicedDepthwiseConv2D, keras.layers.DepthwiseConv2D),
    (layers.SlicedGroupNormalization, keras.layers.GroupNormalization),
    (layers.SlicedBatchNormalization, keras.layers.BatchNormalization),
]


def plain_twin(layer, input_shape, rate):
    """The parent Keras layer at full width with the same weights."""
    for sliced_cls, plain_cls in _PLAIN:
        if isinstance(layer, sliced_cls):
            config = {
                k: v for k, v in layer.get_config().items() if k not in _SLICING_ARGS
            }
            plain = plain_cls.from_config(config)
            weights = layer.get_weights()
            if sliced_cls is layers.SlicedBatchNormalization:
                row = layer.row_of(rate)
                weights = weights[:2] + [weights[2][row], weights[3][row]]
            plain.build(input_shape)
            plain.set_weights(weights)
            return plain
    return layer


def masked_reference(model, x, rate):
    """The full-width model with channels beyond the active prefix zeroed.

    Built from the parent Keras layers: the semantics a sliced model must
    equal at every rate.
    """
    h = keras.ops.convert_to_tensor(x)
    for layer in model.layers[2:]:
        h = plain_twin(layer, tuple(h.shape), rate)(h)
        slices = getattr(layer, "narrows_channels", False) or getattr(
            layer, "follows_input_width", False
        )
        if slices:
            width = h.shape[-1]
            keep = math.ceil(rate * layer.slice_groups - 1e-6) * width // layer.slice_groups
            h = keras.ops.multiply(h, np.arange(width).__lt__(keep).astype("float32"))
    return keras.ops.convert_to_numpy(h)


def count_traces(model):
    """The rate indices of every training step `model` traces or compiles
    from now on (a list that fills as `fit` runs)."""
    traces = []
    step = model._train_step_on

    def counting_step(indices, data):
        traces.append(indices)
        return step(indices, data)

    model._train_step_on = counting_step
    return traces
