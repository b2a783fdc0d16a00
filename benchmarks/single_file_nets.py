"""The four networks `tflite_latency.py --single_file` stores in one file.

The digits CNN, the char-LM and the text Transformer come from `examples/`
at their default sizes; the MobileNet-like CNN (inverted residual blocks:
pointwise expansion, depthwise 3x3, pointwise projection, residual add) is
built here with group normalization, the paper's default: the converter
folds batch normalization into the kernels, and `SlicedBatchNormalization`
keeps statistics of their own per width, so each width's folded kernels
would be kernels of their own, which no file can share.
"""

import importlib.util
import pathlib

import keras
import numpy as np

from keras_slicing import layers
from keras_slicing import rate_input

ROOT = pathlib.Path(__file__).resolve().parents[1]
VOCAB = 96  # printable characters, as the examples' vocabularies
SEQ_LEN = 32


def _example(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mobilenet_like(input_shape=(32, 32, 3), classes=10):
    """Stem, then inverted residual blocks (expand 3x), GAP, dense; group norm."""
    x = keras.Input(input_shape, name="image")
    rate = rate_input()

    def conv_gn(h, filters, kernel=1, strides=1, relu=True, **kwargs):
        h = layers.SlicedConv2D(
            filters, kernel, strides=strides, padding="same", use_bias=False, **kwargs
        )(h, rate)
        h = layers.SlicedGroupNormalization(groups=8)(h, rate)
        return keras.layers.ReLU(6.0)(h) if relu else h

    def block(h, filters, strides):
        expanded = conv_gn(h, 3 * h.shape[-1])
        expanded = layers.SlicedDepthwiseConv2D(
            3, strides=strides, padding="same", use_bias=False
        )(expanded, rate)
        expanded = keras.layers.ReLU(6.0)(
            layers.SlicedGroupNormalization(groups=8)(expanded, rate)
        )
        out = conv_gn(expanded, filters, relu=False)
        if strides == 1 and h.shape[-1] == filters:
            out = keras.layers.Add()([h, out])
        return out

    h = conv_gn(x, 32, kernel=3, strides=2, slice_input=False)
    for filters, strides in ((32, 1), (64, 2), (64, 1), (128, 2), (128, 1)):
        h = block(h, filters, strides)
    h = keras.layers.GlobalAveragePooling2D()(h)
    y = layers.SlicedDense(classes, slice_output=False, name="logits")(h, rate)
    return keras.Model([x, rate], y, name="mobilenet_like")


def build(name):
    """`(model, input_shape, input_dtype)` of a network named in `NETS`."""
    if name == "digits_cnn":
        return _example("digits").sliced_cnn(), (8, 8, 1), "float32"
    if name == "mobilenet_like":
        return mobilenet_like(), (32, 32, 3), "float32"
    if name == "char_lm":
        model = _example("char_lm").sliced_lm(VOCAB, SEQ_LEN, 32, 64)
        return model, (SEQ_LEN,), "int32"
    if name == "text_transformer":
        model = _example("text_transformer").sliced_transformer(VOCAB, SEQ_LEN)
        return model, (SEQ_LEN,), "int32"
    raise ValueError(f"Unknown net. Allowed: {NETS}. Received: {name!r}")


def examples(shape, dtype, count, seed=0):
    rng = np.random.default_rng(seed)
    if dtype == "int32":
        return rng.integers(0, VOCAB, size=(count, *shape)).astype("int32")
    return rng.random((count, *shape)).astype("float32")


NETS = ("digits_cnn", "mobilenet_like", "char_lm", "text_transformer")
