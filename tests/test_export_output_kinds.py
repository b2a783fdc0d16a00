"""Export, cascade and server predictions for every output kind.

References are computed with numpy from the Keras model's own outputs,
never from the code under test.
"""

import contextlib
import io
import json
import shutil

import keras
import numpy as np
import pytest

import keras_slicing
import keras_slicing_cli as cli
from keras_slicing.export import export_tflite
from keras_slicing.export import read_manifest
from keras_slicing.model import SlicingModel
from keras_slicing_lite import ElasticServer
from keras_slicing_lite import LatencyProfile
from keras_slicing_lite import Request
from keras_slicing_lite import load_bundle

L = keras_slicing.layers
RATES = (1.0, 0.5)


def _mlp(units, activation):
    x = keras.Input((8,), name="features")
    r = keras_slicing.rate_input()
    h = L.SlicedDense(32, activation="relu", slice_input=False)(x, r)
    y = L.SlicedDense(units, activation=activation, slice_output=False, name="head")(h, r)
    return SlicingModel([x, r], y, rates=RATES, scheduler="all", seed=0)


def _data(n=400):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 8)).astype("float32")
    binary = (x[:, 0] + 0.5 * x[:, 1] > 0).astype("int64")
    multilabel = (x[:, :3] > 0).astype("int64")
    target = (x[:, 0] - 2 * x[:, 1]).astype("float32")
    return x, binary, multilabel, target


def _trained(units, activation, loss, y, epochs=15):
    keras.utils.set_random_seed(0)
    x = _data()[0]
    model = _mlp(units, activation)
    model.compile(keras.optimizers.Adam(1e-2), loss)
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return model


def _keras(model, x, rate):
    return keras.ops.convert_to_numpy(model([x, np.full(len(x), rate, "float32")]))


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    x, y, _, _ = _data()
    model = _trained(1, "sigmoid", "binary_crossentropy", y)
    path = tmp_path_factory.mktemp("kinds") / "binary"
    manifest = export_tflite(model, path, evaluation_data=(x, y))
    return model, path, manifest


def test_sigmoid_unit_is_exported_as_binary_with_binary_accuracy(binary):
    model, _, manifest = binary
    x, y, _, _ = _data()
    assert manifest["output_kind"] == "binary_probability"
    assert manifest["metric"] == "binary_accuracy"
    for entry in manifest["rates"]:
        p = _keras(model, x, entry["rate"])[:, 0]
        assert "accuracy" not in entry
        assert entry["binary_accuracy"] == pytest.approx(np.mean((p >= 0.5) == y), abs=0.01)
    assert manifest["rates"][0]["binary_accuracy"] > 0.9


def test_binary_cascade_uses_the_sigmoid_confidence(binary):
    model, path, _ = binary
    x = _data()[0][:100]
    p = {r: _keras(model, x, r)[:, 0] for r in RATES}
    confident = np.maximum(p[0.5], 1 - p[0.5]) >= 0.9
    result = load_bundle(path).predict_cascade(x, threshold=0.9)
    np.testing.assert_array_equal(result.rates, np.where(confident, 0.5, 1.0))
    chosen = np.where(confident, p[0.5], p[1.0])
    np.testing.assert_array_equal(result.predictions, (chosen >= 0.5).astype(int))
    assert 0 < confident.sum() < len(x)


def test_binary_response_prediction_thresholds_the_probability(binary):
    model, path, _ = binary
    x = _data()[0][:20]
    profile = LatencyProfile({r: {1: 1.0, 2: 1.5} for r in RATES})
    server = ElasticServer(load_bundle(path), profile, rates=[1.0])
    responses = server.replay([Request(x[i]) for i in range(len(x))])
    p = _keras(model, x, 1.0)[:, 0]
    assert [r.prediction for r in responses] == [int(v >= 0.5) for v in p]


def test_regression_head_gets_mean_absolute_error_not_accuracy(tmp_path):
    x, _, _, target = _data()
    model = _trained(1, None, "mse", target)
    manifest = export_tflite(model, tmp_path / "b", evaluation_data=(x, target))
    assert manifest["output_kind"] == "regression"
    assert manifest["metric"] == "mean_absolute_error"
    for entry in manifest["rates"]:
        expected = np.mean(np.abs(_keras(model, x, entry["rate"])[:, 0] - target))
        assert entry["mean_absolute_error"] == pytest.approx(expected, rel=1e-3)
        assert "accuracy" not in entry
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        cli._print_manifest(read_manifest(tmp_path / "b"))
    assert "mean_absolute_error" in printed.getvalue()
    assert "accuracy " not in printed.getvalue()
    with pytest.raises(ValueError, match="regression"):
        load_bundle(tmp_path / "b").predict_cascade(x)


def test_multilabel_sigmoid_scores_every_label(tmp_path):
    x, _, labels, _ = _data()
    model = _trained(3, "sigmoid", "binary_crossentropy", labels)
    manifest = export_tflite(model, tmp_path / "b", evaluation_data=(x, labels))
    assert manifest["output_kind"] == "multilabel_probabilities"
    p = {r: _keras(model, x, r) for r in RATES}
    for entry in manifest["rates"]:
        expected = np.mean((p[entry["rate"]] >= 0.5) == labels)
        assert entry["binary_accuracy"] == pytest.approx(expected, abs=0.01)
    result = load_bundle(tmp_path / "b").predict_cascade(x[:50], threshold=0.8)
    least_sure = np.maximum(p[0.5][:50], 1 - p[0.5][:50]).min(axis=1)
    np.testing.assert_array_equal(result.rates, np.where(least_sure >= 0.8, 0.5, 1.0))
    assert result.predictions.shape == (50, 3)


def test_softmax_output_is_probabilities_and_not_softmaxed_again(tmp_path):
    x, y, _, _ = _data()
    model = _trained(2, "softmax", "sparse_categorical_crossentropy", y)
    manifest = export_tflite(model, tmp_path / "b", evaluation_data=(x, y))
    assert manifest["output_kind"] == "multiclass_probabilities"
    p = {r: _keras(model, x[:100], r) for r in RATES}
    result = load_bundle(tmp_path / "b").predict_cascade(x[:100], threshold=0.9)
    np.testing.assert_array_equal(
        result.rates, np.where(p[0.5].max(axis=1) >= 0.9, 0.5, 1.0)
    )


def test_linear_single_unit_without_loss_is_ambiguous(tmp_path):
    model = _mlp(1, None)
    with pytest.raises(ValueError, match="output_kind.*'binary_logit' or 'regression'"):
        export_tflite(model, tmp_path / "b")
    manifest = export_tflite(model, tmp_path / "b", output_kind="binary_logit")
    assert manifest["output_kind"] == "binary_logit"


def test_unknown_output_kind_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="output_kind must be one of"):
        export_tflite(_mlp(2, None), tmp_path / "b", output_kind="probabilities")


def test_real_valued_labels_for_a_classifier_are_rejected(tmp_path):
    x, _, _, target = _data()
    with pytest.raises(ValueError, match="output_kind='regression'"):
        export_tflite(_mlp(3, None), tmp_path / "b", evaluation_data=(x, target))


def test_version_1_manifest_is_still_read_as_multiclass(binary, tmp_path):
    _, path, _ = binary
    copy = tmp_path / "v1"
    shutil.copytree(path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 1
    del manifest["output_kind"], manifest["metric"]
    for entry in manifest["rates"]:
        entry["accuracy"] = entry.pop("binary_accuracy")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert read_manifest(copy)["format_version"] == 1
    bundle = load_bundle(copy)
    assert (bundle.output_kind, bundle.metric) == ("multiclass", "accuracy")
