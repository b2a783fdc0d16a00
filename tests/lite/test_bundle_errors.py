import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from keras_slicing_lite import BundleError
from keras_slicing_lite import load_bundle
from tests.lite.conftest import edit_manifest
from keras_slicing_lite import runtime


@pytest.fixture
def bundle_copy(bundle_dir, tmp_path):
    path = tmp_path / "bundle"
    shutil.copytree(bundle_dir, path)
    return path


def test_flipped_byte_is_a_sha256_mismatch_naming_the_file(bundle_copy):
    target = bundle_copy / "rate_0.5.tflite"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"sha256 mismatch for .*rate_0\.5\.tflite"):
        load_bundle(bundle_copy)


def test_truncated_file_is_named(bundle_copy):
    target = bundle_copy / "rate_1.tflite"
    target.write_bytes(target.read_bytes()[:100])
    with pytest.raises(BundleError, match=r"rate_1\.tflite has 100 bytes"):
        load_bundle(bundle_copy)


def test_missing_file_is_named(bundle_copy):
    (bundle_copy / "rate_0.25.tflite").unlink()
    with pytest.raises(BundleError, match=r"rate_0\.25\.tflite .*does not exist"):
        load_bundle(bundle_copy)


def test_swapped_files_in_manifest_are_detected(bundle_copy):
    def swap(manifest):
        first, second = manifest["rates"][0], manifest["rates"][1]
        first["file"], second["file"] = second["file"], first["file"]

    edit_manifest(bundle_copy, swap)
    with pytest.raises(BundleError, match="rate_0.75.tflite"):
        load_bundle(bundle_copy)


def test_tampered_sha256_is_detected(bundle_copy):
    def tamper(manifest):
        manifest["rates"][2]["sha256"] = "0" * 64

    edit_manifest(bundle_copy, tamper)
    with pytest.raises(BundleError, match="sha256 mismatch"):
        load_bundle(bundle_copy)


def test_bad_file_is_detected_before_any_model_loads(bundle_copy, monkeypatch):
    calls = []
    real = runtime.make_interpreter
    monkeypatch.setattr(
        runtime, "make_interpreter", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    (bundle_copy / "rate_0.25.tflite").write_bytes(b"not a model")
    with pytest.raises(BundleError):
        load_bundle(bundle_copy)
    assert calls == []


def test_wrong_format_is_rejected(bundle_copy):
    edit_manifest(bundle_copy, lambda m: m.update(format="something-else"))
    with pytest.raises(BundleError, match="format='something-else'"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("version", [3, 0, "1", True])
def test_unsupported_format_version_is_rejected(bundle_copy, version):
    edit_manifest(bundle_copy, lambda m: m.update(format_version=version))
    with pytest.raises(BundleError, match="format_version"):
        load_bundle(bundle_copy)


def test_unknown_manifest_keys_are_ignored(bundle_copy):
    edit_manifest(bundle_copy, lambda m: m.update(future_field={"a": 1}))
    assert load_bundle(bundle_copy).rates == (1.0, 0.75, 0.5, 0.25)


@pytest.mark.parametrize("name", ["../rate_1.tflite", "/etc/passwd", "..", ""])
def test_file_outside_the_bundle_is_refused(bundle_copy, name):
    edit_manifest(bundle_copy, lambda m: m["rates"][0].update(file=name))
    with pytest.raises(BundleError, match="plain file name"):
        load_bundle(bundle_copy)


def test_rates_out_of_order_are_refused(bundle_copy):
    edit_manifest(bundle_copy, lambda m: m["rates"].reverse())
    with pytest.raises(BundleError, match="widest first"):
        load_bundle(bundle_copy)


def test_input_dtype_mismatch_names_the_file(bundle_copy):
    edit_manifest(bundle_copy, lambda m: m["input"].update(dtype="int8"))
    with pytest.raises(BundleError, match=r"rate_1\.tflite: the input tensor is float32"):
        load_bundle(bundle_copy)


def test_input_shape_mismatch_names_the_file(bundle_copy):
    edit_manifest(bundle_copy, lambda m: m["input"].update(shape=[None, 8, 8, 3]))
    with pytest.raises(BundleError, match=r"rate_1\.tflite: the input tensor has shape"):
        load_bundle(bundle_copy)


def test_invalid_json_is_named(bundle_copy):
    (bundle_copy / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="manifest.json is not valid JSON"):
        load_bundle(bundle_copy)


def test_missing_manifest_is_named(bundle_copy):
    (bundle_copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="manifest.json is missing"):
        load_bundle(bundle_copy)


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(BundleError, match="bundle directory not found"):
        load_bundle(tmp_path / "nowhere")


def test_bundle_error_is_a_value_error():
    assert issubclass(BundleError, ValueError)


@pytest.mark.parametrize("rate", [0.3, 2.0])
def test_unknown_rate_lists_the_available_ones(bundle_dir, reference, rate):
    available = r"is not in this bundle\. Available rates: 1, 0\.75, 0\.5, 0\.25"
    with pytest.raises(ValueError, match=available):
        load_bundle(bundle_dir).predict(reference[0], rate=rate)


@pytest.mark.parametrize("rate", [True, "0.5", float("nan")])
def test_non_numeric_rate_is_rejected(bundle_dir, reference, rate):
    with pytest.raises(ValueError, match="rate must be one of the bundle's rates"):
        load_bundle(bundle_dir).predict(reference[0], rate=rate)


def test_single_example_without_batch_axis_gets_a_hint(bundle_dir, reference):
    hint = r"x\.shape=\(8, 8, 1\)\. For a single example add the batch axis"
    with pytest.raises(ValueError, match=hint):
        load_bundle(bundle_dir).predict(reference[0][0], rate=1.0)


def test_wrong_example_shape_names_the_axis(bundle_dir):
    with pytest.raises(ValueError, match=r"axis 3 should be 1\. Received: x\.shape=\(2, 8, 8, 3\)"):
        load_bundle(bundle_dir).predict(np.zeros((2, 8, 8, 3), "float32"), rate=1.0)


def test_integer_input_to_float_model_is_rejected(bundle_dir):
    with pytest.raises(ValueError, match=r"floating inputs \(float32\)\. Received: x\.dtype=uint8"):
        load_bundle(bundle_dir).predict(np.zeros((2, 8, 8, 1), "uint8"), rate=1.0)


def test_wrong_integer_dtype_to_int8_model_is_rejected(int8_bundle_dir):
    message = r"takes int8 or floating inputs\. Received: x\.dtype=int32"
    with pytest.raises(ValueError, match=message):
        load_bundle(int8_bundle_dir).predict(np.zeros((2, 8, 8, 1), "int32"), rate=1.0)


@pytest.mark.parametrize("num_threads", [0, 1.5, True])
def test_bad_thread_count_is_rejected(bundle_dir, num_threads):
    with pytest.raises(ValueError, match="num_threads"):
        load_bundle(bundle_dir, num_threads=num_threads)


def test_symlinked_model_file_is_refused(bundle_copy, tmp_path):
    target = bundle_copy / "rate_0.5.tflite"
    outside = tmp_path / "outside.tflite"
    target.rename(outside)
    target.symlink_to(outside)
    with pytest.raises(BundleError, match=r"rate_0\.5\.tflite is a symbolic link"):
        load_bundle(bundle_copy)


def test_symlinked_manifest_is_refused(bundle_copy, tmp_path):
    manifest = bundle_copy / "manifest.json"
    outside = tmp_path / "manifest.json"
    manifest.rename(outside)
    manifest.symlink_to(outside)
    with pytest.raises(BundleError, match=r"manifest\.json is a symbolic link"):
        load_bundle(bundle_copy)


def test_fifo_in_place_of_a_model_file_is_refused_without_blocking(bundle_copy):
    target = bundle_copy / "rate_0.25.tflite"
    target.unlink()
    os.mkfifo(target)
    # Opening a FIFO for reading blocks until a writer comes: the reader
    # must refuse it before that.
    with pytest.raises(BundleError, match=r"rate_0\.25\.tflite is not a regular file"):
        load_bundle(bundle_copy)


def test_size_mismatch_is_found_before_hashing(bundle_copy, monkeypatch):
    target = bundle_copy / "rate_1.tflite"
    with open(target, "ab") as handle:
        handle.write(b"\0" * 10)

    def no_read(*args, **kwargs):
        raise AssertionError("hashed before the size was checked")

    monkeypatch.setattr(hashlib, "sha256", no_read)
    with pytest.raises(BundleError, match=r"rate_1\.tflite has \d+ bytes but the manifest"):
        load_bundle(bundle_copy)


def _open_descriptors():
    return len(os.listdir("/proc/self/fd"))


def test_directory_in_place_of_a_model_file_is_named_and_leaks_nothing(bundle_copy):
    target = bundle_copy / "rate_0.5.tflite"
    target.unlink()
    target.mkdir()
    before = _open_descriptors()
    for _ in range(3):
        with pytest.raises(BundleError, match=r"rate_0\.5\.tflite is not a regular file \(a directory\)"):
            load_bundle(bundle_copy)
    assert _open_descriptors() == before


@pytest.mark.parametrize(
    "text, match",
    [
        ('{"format": "keras-slicing-bundle", "rates": [{"rate": 1%s}]}' % ("0" * 400),
         "a rate must be a number in"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"format_version": 1%s}' % ("0" * 5000), "not valid JSON"),
    ],
)
def test_overflowing_or_deeply_nested_manifest_is_a_bundle_error(bundle_copy, text, match):
    if "rates" in text:  # a valid manifest but for the rate
        manifest = json.loads((bundle_copy / "manifest.json").read_text())
        manifest["rates"][0]["rate"] = 10**400
        text = json.dumps(manifest)
    (bundle_copy / "manifest.json").write_text(text)
    with pytest.raises(BundleError, match=rf"manifest\.json.*{match}|{match}.*manifest\.json"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("command", ["info", "serve"])
def test_cli_prints_one_line_for_a_bad_bundle(bundle_copy, command, capsys):
    from keras_slicing_lite import cli

    (bundle_copy / "manifest.json").write_text("[" * 100_000)
    assert cli.main([command, str(bundle_copy)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith(f"keras-slicing-lite {command}: error:") and "manifest.json" in err


def test_cli_info_lists_every_width(bundle_dir, capsys):
    from keras_slicing_lite import cli

    assert cli.main(["info", str(bundle_dir)]) == 0
    out = capsys.readouterr().out
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    for entry in manifest["rates"]:
        assert f"rate {entry['rate']:g}: {entry['file']}, {entry['bytes']} bytes" in out
