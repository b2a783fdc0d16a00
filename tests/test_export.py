import hashlib
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert import schema_py_generated as litert_schema
from ai_edge_litert.interpreter import Interpreter

import keras_slicing
from keras_slicing import export as export_lib
from keras_slicing.export import export_tflite
from keras_slicing.export import read_manifest
from keras_slicing.extract import extract_submodel
from keras_slicing.model import SlicingModel
from keras_slicing.tflite_flatbuffer import tflite_op_names
from tests.sliced_models import digits_split

L = keras_slicing.layers
K = keras.layers
RATES = (1.0, 0.75, 0.5, 0.25)
BUILTINS = {
    name
    for name in vars(litert_schema.BuiltinOperator)
    if not name.startswith("_") and name != "CUSTOM"
}
WIDTHS = {1.0: (16, 32), 0.75: (12, 24), 0.5: (8, 16), 0.25: (4, 8)}


def _digits_model():
    x = keras.Input((8, 8, 1), name="image")
    r = keras_slicing.rate_input()
    h = L.SlicedConv2D(16, 3, padding="same", slice_input=False)(x, r)
    h = L.SlicedGroupNormalization(groups=8)(h, r)
    h = K.ReLU()(h)
    h = L.SlicedConv2D(32, 3, padding="same", strides=2)(h, r)
    h = L.SlicedBatchNormalization(rates=RATES)(h, r)
    h = K.ReLU()(h)
    h = K.GlobalAveragePooling2D()(h)
    y = L.SlicedDense(10, slice_output=False, name="logits")(h, r)
    return keras.Model([x, r], y, name="digits_cnn")


def _digits_macs(rate):
    """Per-example MACs of the digits CNN, counted by hand."""
    c1, c2 = WIDTHS[rate]
    conv1 = 8 * 8 * 3 * 3 * 1 * c1
    conv2 = 4 * 4 * 3 * 3 * c1 * c2
    return conv1 + 8 * 8 * c1 + conv2 + 4 * 4 * c2 + c2 * 10


@pytest.fixture(scope="module")
def digits():
    return digits_split()


@pytest.fixture(scope="module")
def model(digits):
    keras.utils.set_random_seed(0)
    x_train, y_train, _, _ = digits
    model = _digits_model()
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    # One width per batch: a whole epoch at each rate in turn.
    for _ in range(8):
        for rate in RATES:
            rate_values = np.full((len(x_train),), rate, "float32")
            model.fit(
                [x_train, rate_values], y_train, batch_size=64, epochs=1, verbose=0
            )
    keras_slicing.calibrate_batchnorm(model, x_train, rates=RATES)
    return model


@pytest.fixture(scope="module")
def bundles(model, digits, tmp_path_factory):
    x_train, _, x_test, y_test = digits
    root = tmp_path_factory.mktemp("bundles")
    settings = {
        "float32": {"quantization": "float32"},
        "float16": {"quantization": "float16"},
        "dynamic": {"quantization": "dynamic"},
        "int8": {"quantization": "int8", "representative_data": x_train},
        "int8_io": {
            "quantization": "int8",
            "representative_data": x_train,
            "int8_io": True,
        },
    }
    return {
        name: (
            root / name,
            export_tflite(
                model,
                root / name,
                rates=RATES,
                evaluation_data=(x_test, y_test),
                **kwargs,
            ),
        )
        for name, kwargs in settings.items()
    }


def _litert_predict(path, x):
    interpreter = Interpreter(model_path=str(path))
    (inp,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(inp["index"], x.shape)
    interpreter.allocate_tensors()
    if inp["dtype"] == np.int8:
        scale, zero_point = inp["quantization"]
        x = np.clip(np.round(x / scale) + zero_point, -128, 127)
    interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
    interpreter.invoke()
    (out,) = interpreter.get_output_details()
    y = interpreter.get_tensor(out["index"])
    if out["dtype"] == np.int8:
        scale, zero_point = out["quantization"]
        y = (y.astype("float32") - zero_point) * scale
    return y


def _keras_predict(model, x, rate):
    rate_values = np.full((len(x),), rate, "float32")
    return model.predict([x, rate_values], verbose=0, batch_size=len(x))


def _accuracy(logits, y):
    return float(np.mean(np.argmax(logits, -1) == y))


def test_float32_files_match_keras_at_every_rate(model, bundles, digits):
    x_test = digits[2]
    path, manifest = bundles["float32"]
    for entry in manifest["rates"]:
        np.testing.assert_allclose(
            _litert_predict(path / entry["file"], x_test),
            _keras_predict(model, x_test, entry["rate"]),
            atol=1e-4,
            err_msg=f"rate {entry['rate']}",
        )


def test_float16_files_match_keras_loosely_at_every_rate(model, bundles, digits):
    x_test = digits[2]
    path, manifest = bundles["float16"]
    for entry in manifest["rates"]:
        np.testing.assert_allclose(
            _litert_predict(path / entry["file"], x_test),
            _keras_predict(model, x_test, entry["rate"]),
            atol=5e-2,
            err_msg=f"rate {entry['rate']}",
        )


def test_dynamic_range_files_predict_like_keras_at_every_rate(model, bundles, digits):
    x_test = digits[2]
    path, manifest = bundles["dynamic"]
    for entry in manifest["rates"]:
        lite = _litert_predict(path / entry["file"], x_test)
        reference = _keras_predict(model, x_test, entry["rate"])
        agreement = np.mean(lite.argmax(-1) == reference.argmax(-1))
        assert agreement >= 0.97, (entry["rate"], agreement)


@pytest.mark.parametrize("bundle", ["int8", "int8_io"])
def test_int8_accuracy_is_within_two_points_of_float(model, bundles, digits, bundle):
    _, _, x_test, y_test = digits
    path, manifest = bundles[bundle]
    for entry in manifest["rates"]:
        lite = _accuracy(_litert_predict(path / entry["file"], x_test), y_test)
        reference = _accuracy(_keras_predict(model, x_test, entry["rate"]), y_test)
        assert abs(lite - reference) <= 0.02, (entry["rate"], lite, reference)


def test_int8_io_files_take_and_give_int8_tensors(bundles):
    path, manifest = bundles["int8_io"]
    assert manifest["input"]["dtype"] == "int8"
    assert manifest["output"]["dtype"] == "int8"
    for entry in manifest["rates"]:
        interpreter = Interpreter(model_path=str(path / entry["file"]))
        (inp,) = interpreter.get_input_details()
        (out,) = interpreter.get_output_details()
        assert inp["dtype"] == np.int8 and out["dtype"] == np.int8


def test_int8_io_files_share_the_manifest_scale_and_zero_point(bundles):
    # A runtime switching widths dequantizes every output the same way.
    path, manifest = bundles["int8_io"]
    for entry in manifest["rates"]:
        interpreter = Interpreter(model_path=str(path / entry["file"]))
        for role, (detail,) in (
            ("input", interpreter.get_input_details()),
            ("output", interpreter.get_output_details()),
        ):
            scale, zero_point = detail["quantization"]
            assert manifest[role]["quantization"] == {
                "scale": scale,
                "zero_point": zero_point,
            }, (entry["file"], role)


def test_int8_files_keep_float_input_and_output_by_default(bundles):
    path, manifest = bundles["int8"]
    assert manifest["input"]["dtype"] == "float32"
    assert manifest["input"]["quantization"] is None
    interpreter = Interpreter(model_path=str(path / manifest["rates"][0]["file"]))
    assert interpreter.get_input_details()[0]["dtype"] == np.float32
    assert interpreter.get_output_details()[0]["dtype"] == np.float32


def test_no_file_holds_flex_or_custom_ops(bundles):
    for path, manifest in bundles.values():
        for entry in manifest["rates"]:
            interpreter = Interpreter(model_path=str(path / entry["file"]))
            names = {op["op_name"] for op in interpreter._get_ops_details()}
            assert names, entry["file"]
            assert names <= BUILTINS, (path.name, entry["file"], names - BUILTINS)


def test_flex_ops_are_refused(tmp_path):
    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
    def cumulative_product(x):
        return tf.math.cumprod(x, axis=1)

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [cumulative_product.get_concrete_function()], cumulative_product
    )
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS,
        tf.lite.OpsSet.SELECT_TF_OPS,
    ]
    content = converter.convert()
    with pytest.raises(ValueError, match="FlexCumprod"):
        export_lib.check_builtin_ops(content)


def test_files_accept_any_batch_size(model, bundles, digits):
    x_test = digits[2]
    path, manifest = bundles["float32"]
    entry = manifest["rates"][-1]
    for batch in (1, 7, 33):
        lite = _litert_predict(path / entry["file"], x_test[:batch])
        assert lite.shape == (batch, 10)
        np.testing.assert_allclose(
            lite, _keras_predict(model, x_test[:batch], entry["rate"]), atol=1e-4
        )


def test_manifest_follows_the_bundle_format(bundles):
    path, manifest = bundles["float32"]
    on_disk = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    assert on_disk == manifest
    assert manifest["format"] == "keras-slicing-bundle"
    assert manifest["format_version"] == 2
    assert manifest["output_kind"] == "multiclass_logits"
    assert manifest["metric"] == "accuracy"
    assert manifest["model_name"] == "digits_cnn"
    assert manifest["created_by"] == f"keras-slicing {keras_slicing.__version__}"
    assert manifest["quantization"] == "float32"
    assert manifest["input"] == {
        "name": "image",
        "shape": [None, 8, 8, 1],
        "dtype": "float32",
        "quantization": None,
    }
    assert manifest["output"] == {
        "name": "logits",
        "shape": [None, 10],
        "dtype": "float32",
        "quantization": None,
    }
    assert [e["rate"] for e in manifest["rates"]] == [1.0, 0.75, 0.5, 0.25]
    assert [e["file"] for e in manifest["rates"]] == [
        "rate_1.tflite",
        "rate_0.75.tflite",
        "rate_0.5.tflite",
        "rate_0.25.tflite",
    ]


def test_manifest_hashes_and_sizes_match_the_files(bundles):
    for path, manifest in bundles.values():
        listed = {e["file"] for e in manifest["rates"]} | {"manifest.json"}
        assert set(os.listdir(path)) == listed
        for entry in manifest["rates"]:
            content = (path / entry["file"]).read_bytes()
            assert entry["sha256"] == hashlib.sha256(content).hexdigest()
            assert entry["bytes"] == len(content)


def test_manifest_params_and_macs_describe_each_width(model, bundles):
    _, manifest = bundles["float32"]
    for entry in manifest["rates"]:
        plain = extract_submodel(model, entry["rate"])
        assert entry["params"] == plain.count_params()
        assert entry["macs"] == _digits_macs(entry["rate"])


def test_manifest_accuracy_is_that_of_each_file(model, bundles, digits):
    _, _, x_test, y_test = digits
    for name in ("float32", "int8"):
        path, manifest = bundles[name]
        for entry in manifest["rates"]:
            lite = _litert_predict(path / entry["file"], x_test)
            assert entry["accuracy"] == pytest.approx(_accuracy(lite, y_test))


def test_accuracy_is_null_without_evaluation_data(model, tmp_path):
    manifest = export_tflite(model, tmp_path / "bundle", rates=[0.5])
    assert manifest["rates"][0]["accuracy"] is None


def test_default_rates_are_the_four_standard_widths(model, tmp_path):
    manifest = export_tflite(model, tmp_path / "bundle")
    assert [e["rate"] for e in manifest["rates"]] == [1.0, 0.75, 0.5, 0.25]


def test_slicing_model_exports_its_own_rates(tmp_path):
    x = keras.Input((8, 8, 1), name="image")
    r = keras_slicing.rate_input()
    h = L.SlicedConv2D(16, 3, slice_input=False, activation="relu")(x, r)
    h = K.GlobalAveragePooling2D()(h)
    y = L.SlicedDense(10, slice_output=False)(h, r)
    model = SlicingModel([x, r], y, rates=(0.5, 1.0, 0.25))
    manifest = export_tflite(model, tmp_path / "bundle")
    assert [e["rate"] for e in manifest["rates"]] == [1.0, 0.5, 0.25]


def _snapshot(path):
    return {name: (path / name).read_bytes() for name in sorted(os.listdir(path))}


def _fail_on_call(monkeypatch, failing_call):
    convert = export_lib.convert_to_tflite
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == failing_call:
            raise RuntimeError("injected converter failure")
        return convert(*args, **kwargs)

    monkeypatch.setattr(export_lib, "convert_to_tflite", flaky)


def test_failure_mid_export_keeps_the_previous_bundle(model, tmp_path, monkeypatch):
    bundle = tmp_path / "bundle"
    export_tflite(model, bundle, rates=[1.0, 0.5])
    before = _snapshot(bundle)
    _fail_on_call(monkeypatch, failing_call=2)
    with pytest.raises(RuntimeError, match="injected"):
        export_tflite(model, bundle, rates=[0.75, 0.25])
    assert _snapshot(bundle) == before
    assert os.listdir(tmp_path) == ["bundle"]  # no staging leftovers


def test_failure_mid_export_leaves_nothing_when_no_bundle_existed(
    model, tmp_path, monkeypatch
):
    _fail_on_call(monkeypatch, failing_call=2)
    with pytest.raises(RuntimeError, match="injected"):
        export_tflite(model, tmp_path / "bundle", rates=[1.0, 0.5])
    assert os.listdir(tmp_path) == []


def test_export_replaces_a_previous_bundle_whole(model, tmp_path):
    bundle = tmp_path / "bundle"
    export_tflite(model, bundle, rates=[1.0, 0.5])
    export_tflite(model, bundle, rates=[0.25])
    assert sorted(os.listdir(bundle)) == ["manifest.json", "rate_0.25.tflite"]
    assert os.listdir(tmp_path) == ["bundle"]


def test_export_refuses_to_replace_a_directory_that_is_not_a_bundle(
    model, tmp_path
):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="no keras-slicing bundle"):
        export_tflite(model, tmp_path, rates=[1.0])
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_int8_without_representative_data_is_rejected(model, tmp_path):
    with pytest.raises(ValueError, match="representative_data"):
        export_tflite(model, tmp_path / "bundle", quantization="int8")
    assert not (tmp_path / "bundle").exists()


def test_representative_data_of_wrong_shape_is_rejected(model, tmp_path):
    with pytest.raises(ValueError, match=r"shape \(N, 8, 8, 1\)"):
        export_tflite(
            model,
            tmp_path / "bundle",
            quantization="int8",
            representative_data=np.zeros((10, 8, 8, 3), "float32"),
        )


def test_unknown_quantization_is_rejected(model, tmp_path):
    with pytest.raises(ValueError, match="quantization='int4'"):
        export_tflite(model, tmp_path / "bundle", quantization="int4")


def test_int8_io_without_int8_is_rejected(model, tmp_path):
    with pytest.raises(ValueError, match="int8_io"):
        export_tflite(model, tmp_path / "bundle", int8_io=True)


def test_duplicate_rates_are_rejected(model, tmp_path):
    with pytest.raises(ValueError, match="distinct"):
        export_tflite(model, tmp_path / "bundle", rates=[0.5, 1.0, 0.5])


def test_model_whose_output_width_changes_is_rejected(tmp_path):
    x = keras.Input((4,))
    r = keras_slicing.rate_input()
    model = keras.Model([x, r], L.SlicedDense(8, slice_input=False)(x, r))
    with pytest.raises(ValueError, match="slice_output=False"):
        export_tflite(model, tmp_path / "bundle", rates=[1.0, 0.5])
    assert os.listdir(tmp_path) == []


def test_model_without_sliced_layers_is_refused(model, tmp_path):
    plain = keras_slicing.extract_submodel(model, 0.5)
    with pytest.raises(ValueError, match="no sliced layer.*same file"):
        export_tflite(plain, tmp_path / "bundle")
    assert os.listdir(tmp_path) == []


def test_read_manifest_rejects_a_modified_file(bundles, tmp_path):
    source, manifest = bundles["float32"]
    for name in os.listdir(source):
        (tmp_path / name).write_bytes((source / name).read_bytes())
    target = tmp_path / manifest["rates"][1]["file"]
    content = bytearray(target.read_bytes())
    content[-1] ^= 0xFF
    target.write_bytes(bytes(content))
    with pytest.raises(ValueError, match=r"sha256 mismatch for .*rate_0\.75\.tflite"):
        read_manifest(tmp_path)


def test_read_manifest_rejects_another_format_version(bundles, tmp_path):
    _, manifest = bundles["float32"]
    (tmp_path / "manifest.json").write_text(
        json.dumps({**manifest, "format_version": 3}), encoding="utf-8"
    )
    with pytest.raises(ValueError, match="format_version=3"):
        read_manifest(tmp_path, verify=False)


def test_files_run_in_litert_without_tensorflow(bundles, digits):
    path, manifest = bundles["int8"]
    np.save(path.parent / "x.npy", digits[2][:5])
    script = (
        "import sys, numpy as np\n"
        "from ai_edge_litert.interpreter import Interpreter\n"
        f"it = Interpreter(model_path={str(path / manifest['rates'][-1]['file'])!r})\n"
        "it.allocate_tensors()\n"
        f"x = np.load({str(path.parent / 'x.npy')!r})\n"
        "i = it.get_input_details()[0]['index']\n"
        "it.resize_tensor_input(i, x.shape); it.allocate_tensors()\n"
        "it.set_tensor(i, x); it.invoke()\n"
        "y = it.get_tensor(it.get_output_details()[0]['index'])\n"
        "assert y.shape == (5, 10), y.shape\n"
        "assert 'tensorflow' not in sys.modules\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_column_labels_give_the_same_accuracy_as_flat_labels(model, bundles, digits, tmp_path):
    _, _, x_test, y_test = digits
    manifest = keras_slicing.export_tflite(
        model, tmp_path / "column", rates=[0.5],
        evaluation_data=(x_test, y_test.reshape(-1, 1)),
    )
    flat = json.loads((bundles["float32"][0] / "manifest.json").read_text())
    expected = next(e["accuracy"] for e in flat["rates"] if e["rate"] == 0.5)
    assert manifest["rates"][0]["accuracy"] == pytest.approx(expected)


@pytest.mark.parametrize(
    "entry_change",
    [{"file": "../rate_1.tflite"}, {"sha256": None}, {"file": None}],
)
def test_malformed_manifest_entries_are_rejected(bundles, tmp_path, entry_change):
    source, _ = bundles["float32"]
    copy = tmp_path / "bundle"
    shutil.copytree(source, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["rates"][0].update(entry_change)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="read_manifest: invalid manifest .*(file|sha256)"):
        read_manifest(copy)


def test_host_and_edge_readers_agree_on_the_format_constants():
    from keras_slicing_lite import manifest as lite_manifest

    names = ("FORMAT", "FORMAT_VERSION", "MANIFEST_NAME", "QUANTIZATIONS")
    for name in names:
        assert getattr(export_lib, name) == getattr(lite_manifest, name), name


@pytest.mark.parametrize("target", ["model", "manifest"])
def test_host_reader_refuses_symlinked_bundle_files(bundles, tmp_path, target):
    source, manifest = bundles["float32"]
    copy = tmp_path / "bundle"
    shutil.copytree(source, copy)
    name = manifest["rates"][0]["file"] if target == "model" else "manifest.json"
    real = tmp_path / "elsewhere"
    (copy / name).rename(real)
    (copy / name).symlink_to(real)
    with pytest.raises(ValueError, match=f"read_manifest: .*{name} is a symbolic link"):
        read_manifest(copy)


def test_converted_model_with_joins_exports_files_equal_to_keras(tmp_path):
    x = keras.Input((6, 6, 3))
    a = K.Conv2D(8, 3, padding="same", name="a")(x)
    b = K.Conv2D(4, 1, name="b")(x)
    h = K.BatchNormalization(name="bn")(K.Concatenate(name="join")([a, b]))
    h = K.Concatenate(name="join2")([h, K.Conv2D(4, 1, name="c")(h)])
    plain = keras.Model(x, K.Dense(3, name="logits")(K.GlobalAveragePooling2D()(h)))
    images = np.random.default_rng(0).random((16, 6, 6, 3)).astype("float32")
    sliced = keras_slicing.slice_model(plain, slice_groups=4, rates=(1.0, 0.5, 0.25),
                                       data=images)
    manifest = export_tflite(sliced, tmp_path / "bundle", output_kind="multiclass_logits")
    for entry in manifest["rates"]:
        path = tmp_path / "bundle" / entry["file"]
        ops = tflite_op_names(path.read_bytes())
        assert "CONCATENATION" in ops and set(ops) <= BUILTINS
        np.testing.assert_allclose(
            _litert_predict(path, images[:4]), _keras_predict(sliced, images[:4], entry["rate"]),
            atol=1e-5, rtol=1e-5,
        )
