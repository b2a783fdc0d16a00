"""Reading and checking the bundle manifest (format `keras-slicing-bundle` v1).

The format is written by `keras_slicing.export_tflite`; this module reads it
without importing that package. Unknown keys are ignored so that a newer
writer of the same version stays readable.
"""

import hashlib
import json
import math
import os
import pathlib

FORMAT = "keras-slicing-bundle"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
TENSOR_DTYPES = ("float32", "float16", "int8", "uint8", "int16")
QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")


class BundleError(ValueError):
    """A bundle that is missing, corrupted, or does not match its manifest."""


def read_manifest(bundle_dir):
    """Reads and validates `bundle_dir/manifest.json`; returns it as a dict.

    Checks the structure only; `verify_files` checks the model files.

    Raises:
        BundleError: naming the manifest and the offending key or value.
    """
    path = pathlib.Path(bundle_dir) / MANIFEST_NAME
    if not pathlib.Path(bundle_dir).is_dir():
        raise BundleError(
            f"load_bundle: bundle directory not found. Received: "
            f"path={str(bundle_dir)!r}"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BundleError(
            f"load_bundle: {path} is missing: a keras-slicing bundle is a "
            "directory holding manifest.json and one .tflite file per rate."
        ) from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as error:
        raise BundleError(f"load_bundle: {path} is not valid JSON: {error}") from None
    _check_manifest(manifest, path)
    return manifest


def verify_files(bundle_dir, manifest):
    """Reads every model file and checks its size and sha256.

    Returns:
        `{rate: bytes}`: the verified contents, so that what is loaded later
        is exactly what was hashed.

    Raises:
        BundleError: naming the first file that is missing or differs.
    """
    contents = {}
    for entry in manifest["rates"]:
        path = pathlib.Path(bundle_dir) / entry["file"]
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BundleError(
                f"load_bundle: {path} is listed in the manifest for "
                f"rate={entry['rate']:g} but does not exist."
            ) from None
        expected_size = entry.get("bytes")
        if expected_size is not None and len(data) != expected_size:
            raise BundleError(
                f"load_bundle: {path} has {len(data)} bytes but the manifest "
                f"says {expected_size}: the file is truncated or replaced."
            )
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry["sha256"].lower():
            raise BundleError(
                f"load_bundle: sha256 mismatch for {path}: the manifest says "
                f"{entry['sha256']}, the file hashes to {digest}. The file is "
                "corrupted or does not belong to this manifest."
            )
        contents[entry["rate"]] = data
    return contents


def _fail(path, message):
    raise BundleError(f"load_bundle: invalid manifest {path}: {message}")


def _check_manifest(manifest, path):
    if not isinstance(manifest, dict):
        _fail(path, f"expected a JSON object. Received: {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise BundleError(
            f"load_bundle: {path} is not a keras-slicing bundle manifest: "
            f"expected format={FORMAT!r}. Received: "
            f"format={manifest.get('format')!r}"
        )
    version = manifest.get("format_version")
    if isinstance(version, bool) or version != FORMAT_VERSION:
        raise BundleError(
            f"load_bundle: {path} has an unsupported format_version. This "
            f"keras_slicing_lite reads format_version={FORMAT_VERSION}. "
            f"Received: format_version={version!r}"
        )
    for key in ("input", "output"):
        _check_tensor(manifest.get(key), key, path)
    quantization = manifest.get("quantization")
    if quantization is not None and not isinstance(quantization, str):
        _fail(path, f"quantization must be a string. Received: {quantization!r}")
    entries = manifest.get("rates")
    if not isinstance(entries, list) or not entries:
        _fail(path, f"'rates' must be a non-empty list. Received: rates={entries!r}")
    previous = math.inf
    for entry in entries:
        rate = _check_rate_entry(entry, path)
        if not rate < previous:
            _fail(
                path,
                "'rates' must list distinct rates, widest first. Received: "
                f"rates={[e.get('rate') for e in entries]!r}",
            )
        previous = rate


def _check_tensor(spec, key, path):
    if not isinstance(spec, dict):
        _fail(path, f"'{key}' must be an object. Received: {key}={spec!r}")
    shape = spec.get("shape")
    if (
        not isinstance(shape, list)
        or not shape
        or shape[0] is not None
        or not all(_is_dim(d) for d in shape[1:])
    ):
        _fail(
            path,
            f"'{key}.shape' must be a list starting with null (the batch "
            f"dimension) followed by positive integers or null. Received: "
            f"shape={shape!r}",
        )
    if spec.get("dtype") not in TENSOR_DTYPES:
        _fail(
            path,
            f"'{key}.dtype' must be one of {', '.join(TENSOR_DTYPES)}. "
            f"Received: dtype={spec.get('dtype')!r}",
        )
    quantization = spec.get("quantization")
    if quantization is not None and not (
        isinstance(quantization, dict)
        and _is_number(quantization.get("scale"))
        and isinstance(quantization.get("zero_point"), int)
    ):
        _fail(
            path,
            f"'{key}.quantization' must be null or {{\"scale\": float, "
            f"\"zero_point\": int}}. Received: quantization={quantization!r}",
        )


def _check_rate_entry(entry, path):
    if not isinstance(entry, dict):
        _fail(path, f"each entry of 'rates' must be an object. Received: {entry!r}")
    rate = entry.get("rate")
    if not _is_number(rate) or not 0.0 < rate <= 1.0:
        _fail(path, f"a rate must be a number in (0, 1]. Received: rate={rate!r}")
    file = entry.get("file")
    # A manifest names files inside its own directory only, never elsewhere.
    if (
        not isinstance(file, str)
        or not file
        or file in (".", "..")
        or os.path.basename(file) != file
        or "\\" in file
    ):
        _fail(
            path,
            f"rate={rate:g}: 'file' must be a plain file name inside the "
            f"bundle. Received: file={file!r}",
        )
    digest = entry.get("sha256")
    if (
        not isinstance(digest, str)
        or len(digest) != 64
        or any(c not in "0123456789abcdefABCDEF" for c in digest)
    ):
        _fail(
            path,
            f"rate={rate:g}: 'sha256' must be 64 hex digits. Received: "
            f"sha256={digest!r}",
        )
    for key in ("bytes", "params", "macs"):
        value = entry.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 0
        ):
            _fail(
                path,
                f"rate={rate:g}: '{key}' must be a non-negative integer or "
                f"null. Received: {key}={value!r}",
            )
    accuracy = entry.get("accuracy")
    if accuracy is not None and not _is_number(accuracy):
        _fail(
            path,
            f"rate={rate:g}: 'accuracy' must be a number or null. Received: "
            f"accuracy={accuracy!r}",
        )
    return float(rate)


def _is_number(value):
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _is_dim(value):
    return value is None or (
        isinstance(value, int) and not isinstance(value, bool) and value > 0
    )
