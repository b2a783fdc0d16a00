import json
import os

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

import keras_slicing
from keras_slicing.layers import SlicedConv1D
from keras_slicing.rates import active_width
from tests.layers import harness

RATES = [1.0, 0.75, 0.5, 0.3, 0.25]
L = keras_slicing.layers


def _built_layer(in_channels=16, filters=32, **kwargs):
    kwargs = {"padding": "same", "strides": 2, **kwargs}
    layer = SlicedConv1D(filters, 3, bias_initializer="random_normal", **kwargs)
    layer.build((None, 11, in_channels))
    return layer


def _inputs_at(rate):
    n_in = active_width(16, rate, 8)
    return (np.random.default_rng(0).normal(size=(2, 11, n_in)).astype("float32"),)


def _causal_layer():
    return _built_layer(padding="causal", strides=1, dilation_rate=2)


CASES = {
    "strided": harness.LayerCase(_built_layer, _inputs_at, keras.layers.Conv1D, rates=RATES),
    "causal_dilated": harness.LayerCase(_causal_layer, _inputs_at, keras.layers.Conv1D),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("check", harness.CHECKS, ids=harness.check_id)
def test_sliced_layer_contract(check, case, tmp_path):
    check(CASES[case], tmp_path)


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
