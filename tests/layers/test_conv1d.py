import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

import keras_slicing
from keras_slicing.layers import SlicedConv1D
from keras_slicing.rates import active_width

RATES = [1.0, 0.75, 0.5, 0.3, 0.25]
L = keras_slicing.layers


def _built_layer(in_channels=16, filters=32, **kwargs):
    kwargs = {"padding": "same", "strides": 2, **kwargs}
    layer = SlicedConv1D(filters, 3, **kwargs)
    layer.build((None, 11, in_channels))
    return layer


def _reference(layer, n_in, n_out, **kwargs):
    kernel, bias = layer.get_weights()
    kwargs = {"padding": "same", "strides": 2, **kwargs}
    conv = keras.layers.Conv1D(n_out, 3, **kwargs)
    conv.build((None, 11, n_in))
    conv.set_weights([kernel[:, :n_in, :n_out], bias[:n_out]])
    return conv


@pytest.mark.parametrize("rate", RATES)
def test_rate_matches_plain_conv1d_on_active_slice(rate):
    layer = _built_layer()
    n_in, n_out = active_width(16, rate, 8), active_width(32, rate, 8)
    x = np.random.default_rng(0).normal(size=(2, 11, n_in)).astype("float32")
    got = layer(x, rate)
    assert got.shape == (2, 6, n_out)
    np.testing.assert_allclose(got, _reference(layer, n_in, n_out)(x), atol=1e-5)


@pytest.mark.parametrize("rate", [1.0, 0.5, 0.25])
def test_causal_dilated_padding_matches_plain_conv1d(rate):
    options = {"padding": "causal", "strides": 1, "dilation_rate": 2}
    layer = _built_layer(**options)
    n_in, n_out = active_width(16, rate, 8), active_width(32, rate, 8)
    x = np.random.default_rng(1).normal(size=(2, 11, n_in)).astype("float32")
    want = _reference(layer, n_in, n_out, **options)(x)
    np.testing.assert_allclose(layer(x, rate), want, atol=1e-5)


@pytest.mark.parametrize("rate", [1.0, 0.5, 0.25])
def test_tensor_rate_in_graph_matches_python_rate(rate):
    layer = _built_layer()
    x = tf.random.normal((2, 11, active_width(16, rate, 8)), seed=1)
    run = tf.function(lambda x, r: layer(x, r))
    np.testing.assert_allclose(run(x, tf.fill([2], rate)), layer(x, rate), atol=1e-6)


def test_full_rate_equals_parent_conv_exactly():
    layer = _built_layer()
    x = tf.random.normal((2, 11, 16), seed=2)
    np.testing.assert_array_equal(layer(x, 1.0), _reference(layer, 16, 32)(x))


def test_unsliced_input_and_output_for_first_and_last_layers():
    first = SlicedConv1D(16, 3, slice_input=False)
    assert first(np.ones((1, 7, 3), "float32"), 0.5).shape == (1, 5, 8)
    last = SlicedConv1D(10, 1, slice_output=False)
    last.build((None, 5, 16))
    assert last(np.ones((1, 5, 4), "float32"), 0.25).shape == (1, 5, 10)


def test_filters_not_divisible_by_slice_groups_is_rejected():
    with pytest.raises(ValueError, match=r"SlicedConv1D.*filters=12.*slice_groups=8"):
        SlicedConv1D(12, 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"groups": 2}, "groups=2"), ({"data_format": "channels_first"}, "channels_last")],
)
def test_unsupported_options_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SlicedConv1D(16, 3, **kwargs)


def _signal_model():
    """conv16/2 - GN - conv32 - GAP - dense on 40-step signals (MNIST-1D)."""
    x = keras.Input((40, 1), name="signal")
    r = keras_slicing.rate_input()
    h = L.SlicedConv1D(16, 5, strides=2, padding="same", slice_input=False)(x, r)
    h = L.SlicedGroupNormalization(groups=8)(h, r)
    h = keras.layers.ReLU()(h)
    h = L.SlicedConv1D(32, 3, padding="valid", activation="relu")(h, r)
    h = keras.layers.GlobalAveragePooling1D()(h)
    y = L.SlicedDense(10, slice_output=False)(h, r)
    model = keras.Model([x, r], y, name="signal_cnn")
    rng = np.random.default_rng(3)
    model.set_weights([rng.normal(0, 0.3, w.shape) for w in model.get_weights()])
    return model


def test_model_cost_counts_conv1d_by_hand():
    model = _signal_model()
    for rate, (c1, c2) in {1.0: (16, 32), 0.5: (8, 16), 0.25: (4, 8)}.items():
        # 40 steps -> 20 (stride 2, same) -> 18 (valid, kernel 3).
        params = (5 * 1 * c1 + c1) + 2 * c1 + (3 * c1 * c2 + c2) + (c2 * 10 + 10)
        macs = 20 * 5 * 1 * c1 + 20 * c1 + 18 * 3 * c1 * c2 + c2 * 10
        assert keras_slicing.model_cost(model, rate) == {"params": params, "macs": macs}


@pytest.mark.parametrize("rate", [1.0, 0.75, 0.5, 0.25])
def test_extracted_model_is_plain_conv1d_and_matches(rate):
    model = _signal_model()
    x = np.random.default_rng(4).normal(size=(5, 40, 1)).astype("float32")
    plain = keras_slicing.extract_submodel(model, rate)
    convs = [layer for layer in plain.layers if isinstance(layer, keras.layers.Conv1D)]
    assert [type(c) for c in convs] == [keras.layers.Conv1D] * 2
    assert [c.filters for c in convs] == [active_width(16, rate, 8),
                                          active_width(32, rate, 8)]
    want = model([x, np.full(5, rate, "float32")])
    np.testing.assert_allclose(plain(x), want, atol=1e-5)


def test_tflite_float32_files_match_keras(tmp_path):
    model = _signal_model()
    x = np.random.default_rng(5).normal(size=(4, 40, 1)).astype("float32")
    manifest = keras_slicing.export_tflite(model, tmp_path / "bundle")
    assert [e["rate"] for e in manifest["rates"]] == [1.0, 0.75, 0.5, 0.25]
    for entry in manifest["rates"]:
        interpreter = Interpreter(str(tmp_path / "bundle" / entry["file"]))
        source = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(source["index"], x.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(source["index"], x)
        interpreter.invoke()
        got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        want = model([x, np.full(4, entry["rate"], "float32")])
        np.testing.assert_allclose(got, want, atol=1e-4)
    assert json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert os.path.getsize(tmp_path / "bundle" / manifest["rates"][0]["file"]) > 0


def test_keras_file_round_trip_keeps_weights_and_slicing(tmp_path):
    model = _signal_model()
    path = tmp_path / "signal.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    layer = loaded.get_layer(model.layers[2].name)
    assert isinstance(layer, SlicedConv1D) and not layer.slice_input
    x = np.random.default_rng(6).normal(size=(3, 40, 1)).astype("float32")
    for rate in (1.0, 0.25):
        r = np.full(3, rate, "float32")
        np.testing.assert_array_equal(loaded([x, r]), model([x, r]))


def test_config_round_trip_keeps_slicing_arguments():
    layer = _built_layer(slice_groups=4, slice_input=False)
    config = layer.get_config()
    clone = SlicedConv1D.from_config(config)
    slicing = (clone.slice_groups, clone.slice_input, clone.slice_output)
    assert slicing == (4, False, True)
    assert clone.get_config() == config
