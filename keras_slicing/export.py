"""A TFLite bundle: one `.tflite` file per width plus `manifest.json`.

Bundle format v2 (read by the edge runtime; documented in docs/deployment.md):
`BUNDLE/manifest.json` and `BUNDLE/rate_{format_rate(r)}.tflite` per rate.
The manifest is read back, here and on the edge, by the one reader of the
TensorFlow-free `keras_slicing_lite.manifest`; what an output means and how
it is scored comes from `keras_slicing_lite.outputs`. Telling a Keras
model's output kind and scoring a file by it is `output_kind.py`; reading and
editing the converted flatbuffers, `tflite_flatbuffer.py`.
"""

import contextlib
import hashlib
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import uuid
import warnings

import keras
import numpy as np
from keras_slicing_lite import manifest as manifest_lib
from keras_slicing_lite import outputs as outputs_lib

from keras_slicing import calibration
from keras_slicing import checks
from keras_slicing import graph
from keras_slicing import keras_internals
from keras_slicing import output_kind as output_kind_lib
from keras_slicing import rates as rates_lib
from keras_slicing import widths as widths_lib
from keras_slicing.cost import model_cost
from keras_slicing.extract import extract_submodel
from keras_slicing.interpreter import load_interpreter
from keras_slicing.tflite_flatbuffer import check_builtin_ops
from keras_slicing.tflite_flatbuffer import share_output_quantization
from keras_slicing.tflite_single_file import SHARING_MODES
from keras_slicing.tflite_single_file import merge_widths
# Part of this module's API: benchmarks and tests import it from here.
from keras_slicing.tflite_flatbuffer import tflite_op_names  # noqa: F401

FORMAT = manifest_lib.FORMAT
FORMAT_VERSION = manifest_lib.FORMAT_VERSION
SINGLE_FILE_FORMAT_VERSION = manifest_lib.SINGLE_FILE_FORMAT_VERSION
SINGLE_FILE_NAME = "model.tflite"
MANIFEST_NAME = manifest_lib.MANIFEST_NAME
QUANTIZATIONS = manifest_lib.QUANTIZATIONS


def export_tflite(
    model,
    output_dir,
    rates=None,
    quantization="float32",
    configs=None,
    representative_data=None,
    evaluation_data=None,
    int8_io=False,
    output_kind=None,
    single_file=False,
    sharing="views",
    verbose=0,
    calibration_data=None,
):
    """Writes a TFLite bundle: one file per rate and `manifest.json`.

    Each rate is cut out of `model` with `extract_submodel` and converted by
    `tf.lite.TFLiteConverter` with builtin operators only (no Flex ops,
    which phone runtimes do not ship); every file accepts any batch size.
    The bundle is assembled in a temporary directory next to `output_dir`
    and renamed into place only when every file is written, so a failure
    leaves the previous bundle (or nothing), never a mix. An existing
    `output_dir` is replaced only if it is empty or a bundle.

    TFLite conversion needs TensorFlow and runs from a `.keras` file: on
    the JAX or PyTorch backend the model is saved to a temporary `.keras`
    file and exported by `keras-slicing export` in a TensorFlow process
    (`KERAS_BACKEND=tensorflow`), so every backend writes the same files
    (the same operators, size and latency). TensorFlow must be installed,
    and custom objects of the model registered
    (`keras.saving.register_keras_serializable`) in a module that process
    imports.

    Args:
        model: A functional model with one data input, one output and a rate
            input (a `SlicingModel` or `keras.Model([x, rate], y)`).
        output_dir: Directory of the bundle.
        rates: Rates to export. Defaults to the model's `rates` attribute
            when it has one, else `(1.0, 0.75, 0.5, 0.25)`. Written widest
            first.
        configs: Optional width configurations to export besides `rates`
            (`keras_slicing.WidthConfig`s, dicts `{group: rate}`, or the
            points of a `keras_slicing.search_widths` result). Each becomes
            an entry of the manifest's `rates` under its equivalent rate,
            the uniform rate of equal MACs (`widths.equivalent_rate`), with
            its `config`; so the edge runtime, its planner and
            `ElasticServer` choose among them exactly as among rates, in
            cost order. A configuration that is one of `rates` or repeats
            another is left out; two different sub-networks of one key are
            refused. A mixed configuration of a model with
            `SlicedBatchNormalization` needs `calibration_data`.
        quantization: `"float32"`, `"float16"` (float16 weights),
            `"dynamic"` (int8 weights, float activations) or `"int8"` (full
            integer, calibrated on `representative_data`).
        representative_data: Array of input examples that calibrates the
            activation ranges; required for, and only used by, `"int8"`.
            Cover the data well (every class, a few hundred examples or
            more): ranges calibrated on a narrow slice of it cost accuracy.
        evaluation_data: Optional `(x, y)`; each written file is scored on
            it with the metric of the output kind (`manifest["metric"]`):
            `accuracy` of class labels (integers or one-hot) for multiclass,
            `binary_accuracy` of 0/1 labels for binary and multi-label (mean
            over labels), `mean_absolute_error` for regression.
        int8_io: With `"int8"`, make the files' input and output int8 too.
            Every file then shares the manifest's scale and zero point: an
            output calibrated to a narrower range is requantized into the
            union of all widths' ranges by one final QUANTIZE op. Defaults
            to `False`: float input and output.
        output_kind: What the output means, one of
            `keras_slicing_lite.outputs.MANIFEST_KINDS`
            (`"multiclass_logits"`, `"binary_probability"`, `"regression"`,
            ...). `None` infers it from the last layer's activation and
            units and the compiled loss, and raises when they leave it
            ambiguous (a linear single unit is binary logits or regression).
        single_file: Write one file, `model.tflite`, holding every rate as a
            signature (`rate_1`, `rate_0.5`, ...) instead of one file per
            rate; the manifest (format version 3) names each rate's
            signature. Each signature computes exactly what that rate's own
            file computes. See `sharing` for what is stored once.
        sharing: With `single_file`, how a narrow width's weights reuse the
            wider ones (`keras_slicing.tflite_single_file.SHARING_MODES`):
            `"views"` (default) points every weight block that is
            contiguous in the wider weight (biases, normalization vectors,
            kernels sliced only in their first dimension) at the wider
            bytes and stores the rest; no width runs slower than its own
            file. `"slices"` also cuts the non-contiguous blocks from the
            wider weight with `STRIDED_SLICE` ops that LiteRT evaluates once
            at preparation: every weight is stored once, but the kernels
            they feed leave XNNPACK and run slower (warned when exported).
            `"copies"` stores every width's weights, like the converter's
            multi-signature conversion.
        calibration_data: Training inputs recomputing the batch-norm
            statistics of the mixed `configs` of a model with
            `SlicedBatchNormalization`, as `keras_slicing.extract_submodel`
            reads them (read once per such configuration). Unused otherwise.

    Returns:
        The manifest, as written to `manifest.json`.

    Example:

    >>> manifest = export_tflite(model, "digits_bundle", rates=[1.0, 0.5])
    >>> [entry["file"] for entry in manifest["rates"]]
    ['rate_1.tflite', 'rate_0.5.tflite']
    """
    quantization = _check_quantization(quantization, representative_data, int8_io)
    rates = _export_rates(model, rates)
    _check_sharing(single_file, sharing)
    checks.check_model(model)
    configs = _export_configs(model, configs, rates, calibration_data)
    calibration.refuse_stale(model, rates, "export_tflite")
    if keras.backend.backend() != "tensorflow":
        if configs:
            raise ValueError(
                "export_tflite: configs are exported on the TensorFlow "
                f"backend only (this is {keras.backend.backend()}): save the "
                "model (model.save('model.keras')) and call export_tflite "
                "with KERAS_BACKEND=tensorflow."
            )
        return _export_on_tensorflow(
            model, output_dir, rates, quantization, representative_data,
            evaluation_data, int8_io, output_kind, single_file, sharing, verbose,
        )
    if not graph.rate_inputs(model):
        raise ValueError(
            f"export_tflite: model '{model.name}' has no sliced layer fed by "
            "a rate input (e.g. it was already cut by extract_submodel), so "
            "every rate would write the same file. Export the sliced model "
            "it came from, or convert this one with "
            "keras_slicing.export.convert_to_tflite."
        )
    (data_input,) = _single(graph.data_inputs(model), "data input", model)
    (output,) = _single(list(model.outputs), "output", model)
    representative = None
    if quantization == "int8":
        representative = _check_examples(
            representative_data, data_input, "representative_data"
        )
    kind = output_kind_lib.infer(model, output, output_kind)
    evaluation = _check_evaluation(evaluation_data, data_input, output, kind)
    metric = outputs_lib.metric_name(kind)
    output_dir = pathlib.Path(output_dir).absolute()
    _check_replaceable(output_dir)

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = output_dir.parent / f".{output_dir.name}.{uuid.uuid4().hex[:8]}.tmp"
    os.mkdir(staging)
    widths = {rate: rate for rate in rates}
    widths.update(configs)
    progress = keras.utils.Progbar(
        len(widths), verbose=verbose, stateful_metrics=["rate"], unit_name="width"
    )
    try:
        contents = {}
        for rate in sorted(widths, reverse=True):
            plain = extract_submodel(
                model, widths[rate],
                calibration_data=calibration_data if rate in configs else None,
            )
            contents[rate] = convert_to_tflite(
                plain, quantization, representative, int8_io
            )
            check_builtin_ops(contents[rate], f"rate {rates_lib.format_rate(rate)}")
            progress.add(1, [("rate", rate)])
        if int8_io:
            contents = share_output_quantization(contents)
        single = None
        if single_file:
            single = _merge(contents, sharing, data_input, evaluation, representative)
            (staging / SINGLE_FILE_NAME).write_bytes(single)
        entries = []
        tensors = None
        for rate, content in contents.items():
            name = tflite_file_name(rate)
            if single is None:
                (staging / name).write_bytes(content)
            interpreter = load_interpreter(model_content=content)
            described = _describe_tensors(interpreter, data_input, output)
            if tensors is None:
                tensors = described
            elif described != tensors:
                raise ValueError(
                    f"export_tflite: the file of rate {rate} has input/output "
                    f"{described} but the widest has {tensors}. Every width "
                    "must give the same output: build the last layer with "
                    "slice_output=False."
                )
            cost = model_cost(model, widths[rate])
            entry = {
                "rate": rate,
                "file": name,
                "sha256": hashlib.sha256(content).hexdigest(),
                "bytes": len(content),
                "params": cost["params"],
                "macs": cost["macs"],
                metric: None,
            }
            if rate in configs:
                entry["config"] = widths_lib.group_rates(
                    model, configs[rate], "export_tflite", uses_statistics=False
                )
            if single is not None:
                # Scores come from the per-width file, which the signature
                # was checked to equal.
                entry.update(
                    file=SINGLE_FILE_NAME,
                    signature=signature_key(rate),
                    sha256=hashlib.sha256(single).hexdigest(),
                    bytes=len(single),
                )
            if evaluation is not None:
                entry[metric] = output_kind_lib.score(interpreter, kind, *evaluation)
            entries.append(entry)
        manifest = {
            "format": FORMAT,
            "format_version": (
                FORMAT_VERSION if single is None else SINGLE_FILE_FORMAT_VERSION
            ),
            "model_name": model.name,
            "created_by": f"keras-slicing {_version()}",
            "quantization": quantization,
            "output_kind": kind,
            "metric": metric,
            "input": tensors["input"],
            "output": tensors["output"],
            "rates": entries,
        }
        if single is not None:
            manifest["sharing"] = sharing
        (staging / MANIFEST_NAME).write_text(
            json.dumps(manifest, indent=2, ensure_ascii=False) + "\n",
            encoding="utf-8",
        )
        _move_into_place(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def convert_to_tflite(
    model, quantization="float32", representative_data=None, int8_io=False
):
    """Converts a plain Keras model to `.tflite` bytes with builtin ops only.

    Args:
        model: A `keras.Model` of standard layers with one input (e.g. from
            `extract_submodel`).
        quantization: One of `"float32"`, `"float16"`, `"dynamic"`, `"int8"`.
        representative_data: Input examples, required for `"int8"`.
        int8_io: With `"int8"`, int8 input and output tensors.

    Returns:
        The flatbuffer as `bytes`.
    """
    import tensorflow as tf

    quantization = _check_quantization(quantization, representative_data, int8_io)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantization == "int8":
        examples = np.asarray(representative_data, dtype=np.float32)

        def representative_dataset():
            for i in range(len(examples)):
                yield [examples[i : i + 1]]

        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    # The converter saves the model through Keras, which prints where, and
    # warns about input statistics that int8 I/O takes from the calibration.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Statistics for quantized inputs were expected"
        )
        return converter.convert()


def signature_key(rate):
    """The signature of `rate` in a single file: `"rate_" + format_rate(rate)`."""
    return f"rate_{rates_lib.format_rate(rate)}"


def _export_on_tensorflow(
    model, output_dir, rates, quantization, representative_data,
    evaluation_data, int8_io, output_kind, single_file, sharing, verbose,
):
    """`export_tflite` through a `.keras` file and a TensorFlow process.

    The TensorFlow converter traces a model on its own backend: a model
    living on JAX or PyTorch converts, if at all, into variable reads and
    calls that phone runtimes run about ten times slower, so it is rebuilt
    on TensorFlow from its saved form and exported there.
    """
    if verbose:
        print(
            f"export_tflite: the {keras.backend.backend()} backend does not "
            "convert to TFLite; exporting through a .keras file on TensorFlow."
        )
    output_dir = pathlib.Path(output_dir).absolute()
    with tempfile.TemporaryDirectory(prefix="keras_slicing_export_") as temp:
        temp = pathlib.Path(temp)
        model.save(temp / "model.keras")
        command = [
            sys.executable, "-m", "keras_slicing_cli", "export",
            str(temp / "model.keras"), str(output_dir),
            "--rates=" + ",".join(repr(float(r)) for r in rates),
            f"--quantization={quantization}",
        ]
        if representative_data is not None:
            np.save(temp / "representative.npy", np.asarray(representative_data))
            command.append(f"--representative_data={temp / 'representative.npy'}")
        if evaluation_data is not None:
            x, y = evaluation_data
            np.savez(temp / "evaluation.npz", x=np.asarray(x), y=np.asarray(y))
            command.append(f"--evaluation_data={temp / 'evaluation.npz'}")
        if int8_io:
            command.append("--int8_io")
        if output_kind is not None:
            command.append(f"--output_kind={output_kind}")
        if single_file:
            command += ["--single_file", f"--sharing={sharing}"]
        env = dict(os.environ, KERAS_BACKEND="tensorflow")
        env["PYTHONPATH"] = os.pathsep.join(
            [_package_root()] + [p for p in [env.get("PYTHONPATH")] if p]
        )
        done = subprocess.run(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
    if verbose:
        print(done.stdout, end="")
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        raise ValueError(
            f"export_tflite: the export on TensorFlow (from a .keras file of "
            f"model '{model.name}') failed: {reason}. TFLite conversion needs "
            "TensorFlow installed beside this backend (pip install "
            "keras-slicing[cpu]) and the model's custom objects registered."
        )
    return read_manifest(output_dir)


def _package_root():
    """The directory holding `keras_slicing_cli` (for the TensorFlow process)."""
    import keras_slicing_cli

    return os.path.dirname(os.path.abspath(keras_slicing_cli.__file__))


def tflite_file_name(rate):
    """`"rate_" + format_rate(rate) + ".tflite"`, e.g. `rate_0.5.tflite`."""
    return f"rate_{rates_lib.format_rate(rate)}.tflite"


def read_manifest(bundle_dir, verify=True):
    """Reads and checks a bundle's `manifest.json`.

    The same reader as the edge runtime's (`keras_slicing_lite.manifest`),
    so that what the host accepts the edge accepts too.

    Args:
        bundle_dir: The bundle directory.
        verify: Whether to check every file's size and sha256 (files must
            be regular files; symlinks and FIFOs are refused).

    Returns:
        The manifest as a dict.

    Raises:
        keras_slicing_lite.BundleError: (a `ValueError`) naming the file or
            key at fault.
    """
    manifest = manifest_lib.read_manifest(bundle_dir, owner="read_manifest")
    if verify:
        manifest_lib.verify_files(bundle_dir, manifest, owner="read_manifest")
    return manifest


def _check_quantization(quantization, representative_data, int8_io):
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"export_tflite: unknown quantization. Allowed: {QUANTIZATIONS}. "
            f"Received: quantization={quantization!r}"
        )
    if quantization == "int8" and representative_data is None:
        raise ValueError(
            "export_tflite: quantization='int8' calibrates activation ranges "
            "on example inputs; pass representative_data (an array of a few "
            "hundred inputs). Received: representative_data=None"
        )
    if quantization != "int8" and representative_data is not None:
        raise ValueError(
            "export_tflite: representative_data is used only with "
            f"quantization='int8'. Received: quantization={quantization!r}"
        )
    if int8_io and quantization != "int8":
        raise ValueError(
            "export_tflite: int8_io=True needs quantization='int8'. "
            f"Received: quantization={quantization!r}"
        )
    return quantization


def _check_sharing(single_file, sharing):
    if not isinstance(single_file, bool):
        raise ValueError(
            "export_tflite: single_file must be True or False. Received: "
            f"single_file={single_file!r}"
        )
    if sharing not in SHARING_MODES:
        raise ValueError(
            f"export_tflite: unknown sharing. Allowed: {SHARING_MODES}. "
            f"Received: sharing={sharing!r}"
        )
    if sharing != "views" and not single_file:
        raise ValueError(
            "export_tflite: sharing applies to single_file=True only. "
            f"Received: sharing={sharing!r}, single_file=False"
        )


def _merge(contents, sharing, data_input, evaluation, representative):
    """The single file of `contents`, checked signature by signature."""
    rates = list(contents)
    merged, reports = merge_widths(
        [contents[r] for r in rates], [signature_key(r) for r in rates], sharing
    )
    check_builtin_ops(merged, "single file")
    if evaluation is not None:
        x = evaluation[0][:8]
    elif representative is not None:
        x = representative[:8]
    else:
        x = _probe_inputs(data_input)
    interpreter = load_interpreter(model_content=merged)
    for rate in rates:
        own = load_interpreter(model_content=contents[rate])
        want = _run_once(own.get_signature_runner(), x)
        got = _run_once(interpreter.get_signature_runner(signature_key(rate)), x)
        exact = want.dtype.kind in "iu"
        if got.shape != want.shape or (
            not np.array_equal(got, want)
            if exact
            else not np.allclose(got, want, rtol=0.0, atol=1e-5)
        ):
            raise AssertionError(
                f"export_tflite: signature {signature_key(rate)!r} of the single "
                "file differs from the file of that rate. Export with "
                "single_file=False and report the model."
            )
    sliced = [report for report in reports if report.sliced_tensors]
    if sliced:
        count = sum(len(report.sliced_tensors) for report in sliced)
        warnings.warn(
            f"export_tflite: sharing='slices' cut {count} weight tensors of "
            "the narrow widths from the wider ones at preparation; the "
            "operators they feed lose XNNPACK's packed weights, so those "
            "widths are slower than in their own files (1.4x to 2.1x in "
            "benchmarks/results/tflite_single_file_thread_time.json). Use "
            "sharing='views' for full speed.",
            stacklevel=3,
        )
    return merged


def _probe_inputs(data_input):
    shape = [8] + [d or 1 for d in data_input.shape[1:]]
    dtype = np.dtype(data_input.dtype)
    if dtype.kind in "iu":
        return np.zeros(shape, dtype=dtype)
    return np.random.default_rng(0).normal(size=shape).astype(dtype)


def _run_once(runner, x):
    (name,) = runner.get_input_details()
    detail = runner.get_input_details()[name]
    dtype = np.dtype(detail["dtype"])
    if dtype.kind in "iu" and np.asarray(x).dtype.kind == "f":
        scale, zero_point = detail["quantization"]
        if scale:
            x = np.clip(np.round(np.asarray(x) / scale + zero_point), -128, 127)
    (output,) = runner(**{name: np.asarray(x).astype(dtype)}).values()
    return output


def _export_rates(model, rates):
    if rates is None:
        rates = getattr(model, "rates", None) or rates_lib.DEFAULT_RATES
    rates = rates_lib.validate_rates(rates, "export_tflite: rates")
    names = [rates_lib.format_rate(r) for r in rates]
    if len(set(names)) != len(names):
        raise ValueError(
            f"export_tflite: rates must be distinct. Received: rates={list(rates)}"
        )
    return tuple(sorted(rates, reverse=True))


def _export_configs(model, configs, rates, calibration_data):
    """`{equivalent rate: config}` of the configurations to export.

    A configuration that is one of `rates` (every group at it), or repeats
    an earlier one, is the same sub-network and is left out. A mixed one of
    a batch-norm model is refused here, before any conversion, without
    `calibration_data`.
    """
    groups = {g.name: g.slice_groups for g in widths_lib.width_groups(model)}

    def widths_of(by_group):
        return tuple(
            rates_lib.active_groups(by_group[name], size)
            for name, size in groups.items()
        )

    seen = {widths_of({name: r for name in groups}): r for r in rates}
    by_key = {}
    for config in configs or ():
        config = getattr(config, "config", config)  # a SearchPoint
        by_group = widths_lib.group_rates(
            model, config, "export_tflite: configs",
            uses_statistics=calibration_data is None,
        )
        if widths_of(by_group) in seen:
            continue
        key = widths_lib.equivalent_rate(model, config)
        if key in by_key or key in rates:
            other = (
                f"rate {key:g}" if key in rates else f"configuration {by_key[key]}"
            )
            raise ValueError(
                f"export_tflite: configuration {config} costs as much as "
                f"{other} (equivalent rate {key:g}), and a bundle holds one "
                "entry per rate. Drop one of them."
            )
        seen[widths_of(by_group)] = key
        by_key[key] = config
    return by_key


def _single(tensors, what, model):
    if len(tensors) != 1:
        raise ValueError(
            f"export_tflite: a bundle holds models of one {what}; model "
            f"'{model.name}' has {len(tensors)}."
        )
    return tensors


def _check_examples(data, data_input, argument):
    try:
        data = np.asarray(data, dtype=np.float32)
    except (TypeError, ValueError):
        raise ValueError(
            f"export_tflite: {argument} must be an array of model inputs. "
            f"Received: {type(data).__name__}"
        ) from None
    expected = tuple(data_input.shape[1:])
    if data.ndim != len(expected) + 1 or len(data) == 0 or any(
        want is not None and have != want
        for have, want in zip(data.shape[1:], expected)
    ):
        raise ValueError(
            f"export_tflite: {argument} must have shape (N, "
            f"{', '.join(map(str, expected))}) with N >= 1. Received: "
            f"shape={data.shape}"
        )
    return data


def _check_evaluation(evaluation_data, data_input, output, kind):
    if evaluation_data is None:
        return None
    if not isinstance(evaluation_data, (tuple, list)) or len(evaluation_data) != 2:
        raise ValueError(
            "export_tflite: evaluation_data must be a pair (x, y). Received: "
            f"{type(evaluation_data).__name__}"
        )
    x = _check_examples(evaluation_data[0], data_input, "evaluation_data x")
    y = outputs_lib.targets(
        kind, evaluation_data[1], tuple(output.shape), "export_tflite: evaluation_data y"
    )
    if len(y) != len(x):
        raise ValueError(
            "export_tflite: evaluation_data x and y differ in length. "
            f"Received: {len(x)} and {len(y)}"
        )
    return x, y


def _describe_tensors(interpreter, data_input, output):
    (input_detail,) = interpreter.get_input_details()
    (output_detail,) = interpreter.get_output_details()
    output_name = keras_internals.producer(output).name
    return {
        "input": _tensor_entry(input_detail, data_input.name),
        "output": _tensor_entry(output_detail, output_name),
    }


def _tensor_entry(detail, name):
    dtype = np.dtype(detail["dtype"])
    shape = [int(d) for d in detail["shape_signature"]]
    quantization = None
    if np.issubdtype(dtype, np.integer):
        scale, zero_point = detail["quantization"]
        quantization = {"scale": float(scale), "zero_point": int(zero_point)}
    return {
        "name": name,
        "shape": [None] + shape[1:],
        "dtype": dtype.name,
        "quantization": quantization,
    }


def _check_replaceable(output_dir):
    if not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise ValueError(
            f"export_tflite: output_dir exists and is not a directory. "
            f"Received: output_dir={str(output_dir)!r}"
        )
    if not any(output_dir.iterdir()):
        return
    try:
        manifest = json.loads((output_dir / MANIFEST_NAME).read_text("utf-8"))
        is_bundle = manifest.get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        is_bundle = False
    if not is_bundle:
        raise ValueError(
            "export_tflite: output_dir holds files but no keras-slicing "
            "bundle; it is replaced only when empty or a bundle. Received: "
            f"output_dir={str(output_dir)!r}"
        )


def _move_into_place(staging, output_dir):
    if not output_dir.exists():
        os.rename(staging, output_dir)
        return
    retired = output_dir.parent / f".{output_dir.name}.{uuid.uuid4().hex[:8]}.old"
    os.rename(output_dir, retired)
    try:
        os.rename(staging, output_dir)
    except BaseException:
        os.rename(retired, output_dir)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def _version():
    import keras_slicing

    return keras_slicing.__version__
