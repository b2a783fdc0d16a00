"""Reading and checking the bundle manifest (format `keras-slicing-bundle`).

The format is written by `keras_slicing.export_tflite`, which checks what it
reads back with this same module (the host imports this TensorFlow-free
package), so writer and readers cannot drift. Unknown keys are ignored so
that a newer writer of the same version stays readable.

Version 2 adds `output_kind` (see `outputs.py`) and `metric`, the name of
the per-rate key holding the evaluation (`accuracy`, `binary_accuracy` or
`mean_absolute_error`). Version 1 has neither and means a multiclass output
with `accuracy` per rate; it is still read.

An entry may carry `config`, `{width group: rate}`: it was exported from a
width configuration (each group of layers at its own rate), and its `rate`
is the uniform rate of equal MACs, its key among the entries. Readers that
ignore `config` serve it as any other width.

Version 3 is the single-file layout: every rate entry names the same file
and, under `signature`, the signature of that file that computes the rate
(`rate_1`, `rate_0.5`, ...). Per-width bundles are still written as
version 2, so that older readers keep loading them; a version-2 reader
refuses a single-file bundle instead of running its widest width for every
rate.
"""

import errno
import hashlib
import json
import math
import os
import pathlib
import stat

from keras_slicing_lite import outputs

FORMAT = "keras-slicing-bundle"
FORMAT_VERSION = 2
SINGLE_FILE_FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
MANIFEST_NAME = "manifest.json"
# A manifest is a few kilobytes; anything far larger is not one.
MAX_MANIFEST_BYTES = 1 << 20
# int32/int64: token ids of sequence models (an embedding lookup reads them).
TENSOR_DTYPES = ("float32", "float16", "int8", "uint8", "int16", "int32", "int64")
QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")


class BundleError(ValueError):
    """A bundle that is missing, corrupted, or does not match its manifest."""


def read_manifest(bundle_dir, owner="load_bundle"):
    """Reads and validates `bundle_dir/manifest.json`; returns it as a dict.

    Checks the structure only; `verify_files` checks the model files. The
    manifest must be a regular file (not a symlink, FIFO or device) of at
    most 1 MiB.

    Args:
        bundle_dir: The bundle directory.
        owner: The name errors start with.

    Raises:
        BundleError: naming the manifest and the offending key or value.
    """
    path = pathlib.Path(bundle_dir) / MANIFEST_NAME
    if not pathlib.Path(bundle_dir).is_dir():
        raise BundleError(
            f"{owner}: bundle directory not found. Received: "
            f"path={str(bundle_dir)!r}"
        )
    try:
        data = read_regular_file(path, owner, max_bytes=MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        raise BundleError(
            f"{owner}: {path} is missing: a keras-slicing bundle is a "
            "directory holding manifest.json and one .tflite file per rate."
        ) from None
    try:
        manifest = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise BundleError(
            f"{owner}: {path} is not a manifest: its JSON is nested too deeply."
        ) from None
    except ValueError as error:
        # JSONDecodeError and UnicodeDecodeError are ValueErrors, and so is
        # an integer of more digits than Python converts.
        raise BundleError(f"{owner}: {path} is not valid JSON: {error}") from None
    _check_manifest(manifest, path, owner)
    return manifest


def verify_files(bundle_dir, manifest, owner="load_bundle"):
    """Reads every model file and checks its size and sha256.

    Each file must be a regular file (symlinks, FIFOs and devices are
    refused before anything is read) whose size matches the manifest's
    `bytes` before it is read.

    Returns:
        `{rate: bytes}`: the verified contents, so that what is loaded later
        is exactly what was hashed. Rates of one file (the single-file
        layout) share one `bytes` object, read and hashed once.

    Raises:
        BundleError: naming the first file that is missing or differs.
    """
    contents = {}
    read = {}
    for entry in manifest["rates"]:
        if entry["file"] in read:
            contents[entry["rate"]] = read[entry["file"]]
            continue
        path = pathlib.Path(bundle_dir) / entry["file"]
        try:
            data = read_regular_file(path, owner, expected_size=entry.get("bytes"))
        except FileNotFoundError:
            raise BundleError(
                f"{owner}: {path} is listed in the manifest for "
                f"rate={entry['rate']:g} but does not exist."
            ) from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry["sha256"].lower():
            raise BundleError(
                f"{owner}: sha256 mismatch for {path}: the manifest says "
                f"{entry['sha256']}, the file hashes to {digest}. The file is "
                "corrupted or does not belong to this manifest."
            )
        contents[entry["rate"]] = read[entry["file"]] = data
    return contents


def signature(entry):
    """The signature of a rate entry's file, or `None` for a whole file."""
    return entry.get("signature")


def read_regular_file(path, owner, expected_size=None, max_bytes=None):
    """The bytes of `path`, refusing anything but a regular file.

    The file is opened without following a final symlink and checked with
    `fstat` on the open descriptor, so it cannot be swapped between the
    check and the read; its size is compared before any byte is read.

    Raises:
        FileNotFoundError: when it does not exist.
        BundleError: for a symlink, FIFO, device or directory, or a size
            other than `expected_size` or above `max_bytes`.
    """
    path = pathlib.Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        if stat.S_ISLNK(os.lstat(path).st_mode):
            raise OSError(errno.ELOOP, "symlink")
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise BundleError(
                f"{owner}: {path} is a symbolic link; bundle files must be "
                "regular files inside the bundle directory."
            ) from None
        raise BundleError(f"{owner}: {path} cannot be opened: {error}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "a FIFO or device"
            raise BundleError(
                f"{owner}: {path} is not a regular file ({kind}); bundle "
                "files must be regular files."
            )
        # fdopen refuses a directory itself; the check above runs first so
        # that the error names the path, and the descriptor is closed below
        # whatever fails.
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        if expected_size is not None and info.st_size != expected_size:
            raise BundleError(
                f"{owner}: {path} has {info.st_size} bytes but the manifest "
                f"says {expected_size}: the file is truncated or replaced."
            )
        if max_bytes is not None and info.st_size > max_bytes:
            raise BundleError(
                f"{owner}: {path} has {info.st_size} bytes, more than the "
                f"{max_bytes} a manifest may have."
            )
        data = handle.read()
    if expected_size is not None and len(data) != expected_size:
        raise BundleError(
            f"{owner}: {path} changed while it was read ({len(data)} bytes, "
            f"the manifest says {expected_size})."
        )
    return data


def output_kind(manifest):
    """The output kind of a manifest; `"multiclass"` for version 1."""
    return manifest.get("output_kind", "multiclass")


def metric(manifest):
    """The name of the per-rate evaluation key; `"accuracy"` for version 1."""
    return manifest.get("metric") or outputs.metric_name(output_kind(manifest))


def _fail(path, message, owner):
    raise BundleError(f"{owner}: invalid manifest {path}: {message}")


def _check_manifest(manifest, path, owner):
    if not isinstance(manifest, dict):
        _fail(path, f"expected a JSON object. Received: {type(manifest).__name__}", owner)
    if manifest.get("format") != FORMAT:
        raise BundleError(
            f"{owner}: {path} is not a keras-slicing bundle manifest: "
            f"expected format={FORMAT!r}. Received: "
            f"format={manifest.get('format')!r}"
        )
    version = manifest.get("format_version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise BundleError(
            f"{owner}: {path} has an unsupported format_version. This "
            f"keras_slicing_lite reads format_version "
            f"{' or '.join(map(str, READABLE_VERSIONS))}. "
            f"Received: format_version={version!r}"
        )
    if version >= 2:
        kind = manifest.get("output_kind")
        if kind not in outputs.MANIFEST_KINDS:
            _fail(
                path,
                f"'output_kind' must be one of {', '.join(outputs.MANIFEST_KINDS)}. "
                f"Received: output_kind={kind!r}",
                owner,
            )
        if manifest.get("metric") != outputs.metric_name(kind):
            _fail(
                path,
                f"'metric' of output_kind={kind!r} must be "
                f"{outputs.metric_name(kind)!r}. Received: "
                f"metric={manifest.get('metric')!r}",
                owner,
            )
    for key in ("input", "output"):
        _check_tensor(manifest.get(key), key, path, owner)
    quantization = manifest.get("quantization")
    if quantization is not None and not isinstance(quantization, str):
        _fail(path, f"quantization must be a string. Received: {quantization!r}", owner)
    entries = manifest.get("rates")
    if not isinstance(entries, list) or not entries:
        _fail(path, f"'rates' must be a non-empty list. Received: rates={entries!r}", owner)
    previous = math.inf
    for entry in entries:
        rate = _check_rate_entry(entry, path, manifest, owner)
        _check_signature(entry, rate, entries, version, path, owner)
        if not rate < previous:
            _fail(
                path,
                "'rates' must list distinct rates, widest first. Received: "
                f"rates={[e.get('rate') for e in entries]!r}",
                owner,
            )
        previous = rate


def _check_tensor(spec, key, path, owner):
    if not isinstance(spec, dict):
        _fail(path, f"'{key}' must be an object. Received: {key}={spec!r}", owner)
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
            owner,
        )
    if spec.get("dtype") not in TENSOR_DTYPES:
        _fail(
            path,
            f"'{key}.dtype' must be one of {', '.join(TENSOR_DTYPES)}. "
            f"Received: dtype={spec.get('dtype')!r}",
            owner,
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
            owner,
        )


def _check_rate_entry(entry, path, manifest, owner):
    if not isinstance(entry, dict):
        _fail(path, f"each entry of 'rates' must be an object. Received: {entry!r}", owner)
    rate = entry.get("rate")
    if not _is_number(rate) or not 0.0 < rate <= 1.0:
        _fail(path, f"a rate must be a number in (0, 1]. Received: rate={rate!r}", owner)
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
            owner,
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
            owner,
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
                owner,
            )
    config = entry.get("config")
    if config is not None and not (
        isinstance(config, dict)
        and config
        and all(
            isinstance(k, str) and _is_number(v) and 0.0 < v <= 1.0
            for k, v in config.items()
        )
    ):
        _fail(
            path,
            f"rate={rate:g}: 'config' (a width configuration) must be null or "
            "a non-empty object {group: rate in (0, 1]}. Received: "
            f"config={config!r}",
            owner,
        )
    name = metric(manifest)
    value = entry.get(name)
    if value is not None and not _is_number(value):
        _fail(
            path,
            f"rate={rate:g}: '{name}' must be a number or null. Received: "
            f"{name}={value!r}",
            owner,
        )
    return float(rate)


def _check_signature(entry, rate, entries, version, path, owner):
    """Version 3 entries name one file and a distinct signature each."""
    key = entry.get("signature")
    if version < SINGLE_FILE_FORMAT_VERSION:
        if key is not None:
            _fail(
                path,
                f"rate={rate:g}: 'signature' needs format_version "
                f"{SINGLE_FILE_FORMAT_VERSION}. Received: format_version="
                f"{version}",
                owner,
            )
        return
    if not isinstance(key, str) or not key:
        _fail(
            path,
            f"format_version={version} is the single-file layout: rate={rate:g} "
            "must name in 'signature' the signature of the file that computes "
            f"it. Received: signature={key!r}",
            owner,
        )
    if [e.get("signature") for e in entries].count(key) != 1:
        _fail(path, f"signature {key!r} is named by more than one rate.", owner)
    files = {e.get("file") for e in entries}
    if len(files) != 1:
        _fail(
            path,
            "a single-file bundle names one file for every rate. Received: "
            f"files={sorted(map(str, files))}",
            owner,
        )


def _is_number(value):
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _is_dim(value):
    return value is None or (
        isinstance(value, int) and not isinstance(value, bool) and value > 0
    )
