"""An exported width of a converted network does the work of a native one.

A natively narrow network written by hand is the reference: an exported
width that added operators (a SLICE of a weight, a PAD, a GATHER, a
computed RESHAPE) would run slower than the network it stands for.
"""

import keras
import numpy as np

import keras_slicing
from keras_slicing.export import convert_to_tflite
from keras_slicing.tflite_flatbuffer import tflite_operators
from tests.conversion.plain_models import randomize

K = keras.layers


def _squeeze_excite_cnn(scale):
    """MobileNet/EfficientNet parts with every channel count times `scale`."""

    def width(channels):
        return int(channels * scale)

    x = keras.Input((8, 8, 3), name="image")
    h = K.Conv2D(width(16), 3, padding="same", name="stem")(x)
    h = K.BatchNormalization(name="stem_bn")(h)
    h = K.ReLU(6.0)(h)
    skip = h
    h = K.DepthwiseConv2D(3, padding="same", name="depthwise")(h)
    h = K.BatchNormalization(name="depthwise_bn")(h)
    h = K.Activation("swish")(h)
    gate = K.GlobalAveragePooling2D()(h)
    gate = K.Reshape((1, 1, width(16)), name="se_reshape")(gate)
    gate = K.Conv2D(width(8), 1, activation="relu", name="se_reduce")(gate)
    gate = K.Conv2D(width(16), 1, activation="sigmoid", name="se_expand")(gate)
    h = K.Multiply(name="se_gate")([h, gate])
    h = K.Conv2D(width(16), 1, name="project")(h)
    h = K.BatchNormalization(name="project_bn")(h)
    h = K.Add(name="residual")([h, skip])
    h = K.GlobalAveragePooling2D()(h)
    y = K.Dense(5, name="logits")(h)
    return randomize(keras.Model(x, y, name="se_cnn"))


def test_exported_half_width_has_the_operators_of_a_native_half_network(tmp_path):
    images = np.random.default_rng(0).random((16, 8, 8, 3)).astype("float32")
    sliced = keras_slicing.slice_model(_squeeze_excite_cnn(1.0), data=images)
    manifest = keras_slicing.export_tflite(sliced, tmp_path / "bundle", rates=[0.5])
    exported = (tmp_path / "bundle" / manifest["rates"][0]["file"]).read_bytes()
    native = tflite_operators(convert_to_tflite(_squeeze_excite_cnn(0.5)))
    # The layers written above, so that two empty lists cannot pass.
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"} <= {
        name for name, _ in native
    }
    assert tflite_operators(exported) == native
