import json

import keras
import numpy as np
import pytest
from keras_slicing_lite import BundleError
from keras_slicing_lite import load_bundle

import keras_slicing
from keras_slicing.export import export_tflite
from keras_slicing.export import read_manifest
from tests.sliced_models import randomize_weights
from tests.sliced_models import small_bn_cnn

L = keras_slicing.layers


def _model():
    x = keras.Input((6, 6, 1), name="image")
    r = keras_slicing.rate_input()
    h = L.SlicedConv2D(8, 3, padding="same", slice_input=False, name="conv1")(x, r)
    h = keras.layers.ReLU()(h)
    h = L.SlicedConv2D(16, 3, strides=2, padding="same", name="conv2")(h, r)
    h = keras.layers.GlobalAveragePooling2D()(h)
    y = L.SlicedDense(4, slice_output=False, name="logits")(h, r)
    model = keras.Model([x, r], y, name="cnn")
    randomize_weights(model)
    return model


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = _model()
    config = {"conv1": 0.25, "conv2": 1.0}
    path = tmp_path_factory.mktemp("bundle") / "cnn"
    # The second configuration is rate 1.0 itself: the same sub-network.
    manifest = export_tflite(
        model, path, rates=[1.0, 0.5], configs=[config, {"conv1": 1.0, "conv2": 1.0}],
        output_kind="multiclass_logits",
    )
    return model, config, path, manifest


def test_config_entry_round_trips_through_the_manifest(bundle):
    model, config, path, manifest = bundle
    read = read_manifest(path)
    assert read == manifest
    (entry,) = [e for e in read["rates"] if "config" in e]
    assert entry["config"] == config
    assert entry["rate"] == keras_slicing.widths.equivalent_rate(model, config)
    assert entry["macs"] == keras_slicing.model_cost(model, config)["macs"]
    assert [e["rate"] for e in read["rates"]] == sorted(
        (e["rate"] for e in read["rates"]), reverse=True
    )


def test_edge_bundle_serves_the_config_entry_as_the_extracted_model(bundle):
    model, config, path, manifest = bundle
    (entry,) = [e for e in manifest["rates"] if "config" in e]
    x = np.random.default_rng(0).normal(size=(3, 6, 6, 1)).astype("float32")
    edge = load_bundle(path)
    assert edge.rate_entry(entry["rate"])["config"] == config
    np.testing.assert_allclose(
        edge.predict(x, rate=entry["rate"]),
        keras_slicing.extract_submodel(model, config).predict(x, verbose=0),
        atol=1e-5,
    )


def test_config_that_is_an_exported_rate_is_left_out(bundle):
    _, _, _, manifest = bundle
    plain = [e["rate"] for e in manifest["rates"] if "config" not in e]
    configs = [e["config"] for e in manifest["rates"] if "config" in e]
    assert plain == [1.0, 0.5]
    assert configs == [{"conv1": 0.25, "conv2": 1.0}]


def test_manifest_with_a_malformed_config_is_rejected(bundle, tmp_path):
    _, _, path, manifest = bundle
    broken = json.loads(json.dumps(manifest))
    next(e for e in broken["rates"] if "config" in e)["config"] = {"conv1": 2.0}
    (tmp_path / "manifest.json").write_text(json.dumps(broken))
    with pytest.raises(BundleError, match="'config'"):
        read_manifest(tmp_path, verify=False)


def test_mixed_config_of_a_batch_norm_model_without_data_is_rejected(tmp_path):
    model = small_bn_cnn()
    with pytest.raises(ValueError, match="export_tflite: configs.*calibration_data"):
        export_tflite(model, tmp_path / "bn", rates=[1.0], configs=[{"conv1": 0.5}])


def test_mixed_config_of_a_batch_norm_model_serves_its_recalibrated_model(tmp_path):
    model = small_bn_cnn()
    randomize_weights(model)
    rng = np.random.default_rng(0)
    calibration = rng.normal(size=(32, 6, 6, 2)).astype("float32")
    x = rng.normal(size=(3, 6, 6, 2)).astype("float32")
    config = {"conv1": 0.5, "conv2": 0.25}
    manifest = export_tflite(
        model, tmp_path / "bn", rates=[1.0], configs=[config],
        output_kind="multiclass_logits", calibration_data=calibration,
    )
    (entry,) = [e for e in manifest["rates"] if "config" in e]
    plain = keras_slicing.extract_submodel(model, config, calibration_data=calibration)
    np.testing.assert_allclose(
        load_bundle(tmp_path / "bn").predict(x, rate=entry["rate"]),
        plain.predict(x, verbose=0),
        atol=1e-5,
    )
