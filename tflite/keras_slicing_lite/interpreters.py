"""The TFLite interpreters under a bundle: loaded, checked, cached per shape.

`Bundle` is what callers see (rates, tensor specs, predict, the cascade,
profiling); this module is what runs beneath it: each verified file loaded
from the bytes that were hashed, its tensors checked against the manifest,
and one interpreter kept per rate and recent input shape. It is separate
because none of this bookkeeping is part of the bundle's API, and because
the lock that serializes calls belongs beside the interpreters it guards.
"""

import collections
import math
import threading

import numpy as np

from keras_slicing_lite import manifest as manifest_lib
from keras_slicing_lite import runtime
from keras_slicing_lite.inputs import format_shape


class Interpreters:
    """The interpreters of every rate of a bundle, one per recent input shape.

    Every file is loaded and checked when this is built, so that a bundle
    never exists with a file that cannot run. Calls are serialized by one
    lock: a TFLite interpreter is not thread-safe.

    A per-width bundle keeps interpreters per rate. A single-file bundle
    (manifest version 3) keeps one interpreter of its file per input shape,
    holding every width, and runs a rate through that width's signature
    runner; each signature's subgraph has tensors of its own, so switching
    widths never resizes anything.

    Args:
        path: The bundle directory, named in errors.
        manifest: The validated manifest dict; read, never changed.
        contents: `{rate: bytes}` of the verified model files.
        num_threads: Interpreter threads per call, or `None`.
        capacity: Interpreters kept per rate (per file, for a single-file
            bundle), one per input shape: resizing an interpreter costs as
            much as several calls, so each batch size seen recently keeps
            its own.

    Attributes:
        input_quantization: `(scale, zero_point)` of the input tensor, the
            same in every file; a scale of 0 means not quantized.
        output_quantization: The same for the output tensor.
    """

    def __init__(self, path, manifest, contents, num_threads, capacity):
        self.path = path
        self._manifest = manifest
        self._entries = {float(e["rate"]): e for e in manifest["rates"]}
        self._contents = {float(r): c for r, c in contents.items()}
        self._signatures = {
            rate: manifest_lib.signature(entry) for rate, entry in self._entries.items()
        }
        self.num_threads = num_threads
        self.capacity = capacity
        self._lock = threading.Lock()
        self._cache = {self._slot(rate): collections.OrderedDict() for rate in self._entries}
        shared = None
        for rate in self._entries:
            if self._signatures[rate] is None:
                shape, runner = self._load_and_check(rate)
                self._cache[rate][shape] = runner
            else:
                shared = self._load_and_check(rate, shared)
        if shared is not None:
            self._cache[None][shared[0]] = shared[1]

    def run(self, rate, batch):
        """The float32 outputs of `rate` on a prepared, non-empty batch;
        quantized outputs are dequantized."""
        with self._lock:
            out = self._runner(rate, batch.shape)(rate, batch)
        scale, zero_point = self.output_quantization
        if out.dtype.kind in "iu" and scale > 0:
            return ((out.astype(np.float32) - zero_point) * scale).astype(np.float32)
        return out.astype(np.float32, copy=True)

    def keep_at_least(self, count):
        """Keeps at least `count` interpreters per rate from now on."""
        self.capacity = max(self.capacity, count)

    def _slot(self, rate):
        """Where the interpreters of `rate` are cached: all signatures share one."""
        return rate if self._signatures[rate] is None else None

    def _runner(self, rate, shape):
        cache = self._cache[self._slot(rate)]
        shape = tuple(int(d) for d in shape)
        if shape in cache:
            cache.move_to_end(shape)
            return cache[shape]
        interpreter = runtime.make_interpreter(self._contents[rate], self.num_threads)
        if self._signatures[rate] is None:
            detail = interpreter.get_input_details()[0]
            if tuple(detail["shape"]) != shape:
                interpreter.resize_tensor_input(detail["index"], list(shape))
            interpreter.allocate_tensors()
            runner = _FileRunner(
                interpreter, detail["index"], interpreter.get_output_details()[0]["index"]
            )
        else:
            # A signature runner resizes its own subgraph on its first call.
            runner = _SignatureRunners(interpreter, self._signatures)
        cache[shape] = runner
        while len(cache) > self.capacity:
            cache.popitem(last=False)
        return runner

    def _load_and_check(self, rate, shared=None):
        """Loads the file (or signature) of `rate`, checks it against the manifest.

        `shared` is the `(shape, _SignatureRunners)` already loaded for an
        earlier signature of the same file.
        """
        entry = self._entries[rate]
        path = self.path / entry["file"]
        key = self._signatures[rate]
        try:
            if shared is None:
                interpreter = runtime.make_interpreter(
                    self._contents[rate], self.num_threads
                )
                if key is None:
                    interpreter.allocate_tensors()
            else:
                interpreter = shared[1].interpreter
        except (ValueError, RuntimeError) as error:
            hint = ""
            if (
                runtime.runtime_name() == "tflite_runtime"
                and self._manifest.get("quantization") == "dynamic"
            ):
                hint = (
                    " tflite_runtime cannot run dynamic-range models converted "
                    "by TensorFlow >= 2.18: install ai-edge-litert, or export "
                    "the bundle with quantization float32, float16 or int8."
                )
            raise manifest_lib.BundleError(
                f"load_bundle: {path} could not be loaded by "
                f"{runtime.runtime_name()}: {error}.{hint}"
            ) from None
        if key is None:
            inputs = interpreter.get_input_details()
            outputs = interpreter.get_output_details()
            where = str(path)
        else:
            available = sorted(interpreter.get_signature_list())
            for other, wanted in self._signatures.items():
                if wanted not in available:
                    raise manifest_lib.BundleError(
                        f"load_bundle: {path} has no signature {wanted!r} for "
                        f"rate={other:g}; it has {available}. The file does "
                        "not belong to this manifest."
                    )
            runner = interpreter.get_signature_runner(key)
            inputs = list(runner.get_input_details().values())
            outputs = list(runner.get_output_details().values())
            where = f"{path} (signature {key!r})"
        if len(inputs) != 1 or len(outputs) != 1:
            raise manifest_lib.BundleError(
                f"load_bundle: {where} has {len(inputs)} inputs and "
                f"{len(outputs)} outputs; a bundle model has exactly one of each."
            )
        quantization = {}
        for role, detail in (("input", inputs[0]), ("output", outputs[0])):
            quantization[role] = _check_tensor(where, role, detail, self._manifest[role])
        # The widest file sets the quantization every other width must share.
        if rate == next(iter(self._entries)):
            self.input_quantization = quantization["input"]
            self.output_quantization = quantization["output"]
        elif (quantization["input"], quantization["output"]) != (
            self.input_quantization,
            self.output_quantization,
        ):
            raise manifest_lib.BundleError(
                f"load_bundle: {where} quantizes its input/output differently "
                "from the widest rate's file; every width must share them."
            )
        shape = tuple(int(d) for d in inputs[0]["shape"])
        if key is not None:
            if shared is None:
                shared = (shape, _SignatureRunners(interpreter, self._signatures))
            # Running each signature once here prepares it (allocates its
            # tensors), so that a file whose width cannot run fails now.
            try:
                shared[1](rate, np.zeros(shared[0], dtype=inputs[0]["dtype"]))
            except (ValueError, RuntimeError) as error:
                raise manifest_lib.BundleError(
                    f"load_bundle: {where} could not be run by "
                    f"{runtime.runtime_name()}: {error}."
                ) from None
            return shared
        return shape, _FileRunner(interpreter, inputs[0]["index"], outputs[0]["index"])


class _FileRunner:
    """Runs the one input and output of a whole-file interpreter."""

    def __init__(self, interpreter, input_index, output_index):
        self.interpreter = interpreter
        self._input_index = input_index
        self._output_index = output_index

    def __call__(self, rate, batch):
        self.interpreter.set_tensor(self._input_index, batch)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._output_index)


class _SignatureRunners:
    """Runs each rate through its signature of one interpreter."""

    def __init__(self, interpreter, signatures):
        self.interpreter = interpreter
        self._runners = {}
        for rate, key in signatures.items():
            runner = interpreter.get_signature_runner(key)
            (input_name,) = runner.get_input_details()
            (output_name,) = runner.get_output_details()
            self._runners[rate] = (runner, input_name, output_name)

    def __call__(self, rate, batch):
        runner, input_name, output_name = self._runners[rate]
        return runner(**{input_name: batch})[output_name]


def _check_tensor(where, role, detail, spec):
    """Compares a tensor of the file with the manifest; returns (scale, zero_point)."""
    path = where
    dtype = np.dtype(detail["dtype"]).name
    if dtype != spec["dtype"]:
        raise manifest_lib.BundleError(
            f"load_bundle: {path}: the {role} tensor is {dtype} but the "
            f"manifest says {role}.dtype={spec['dtype']!r}."
        )
    signature = detail.get("shape_signature")
    if signature is None or len(signature) == 0:
        signature = detail["shape"]
    actual = [None if d < 0 else int(d) for d in signature]
    if len(actual) != len(spec["shape"]) or any(
        want is not None and got is not None and want != got
        for want, got in zip(spec["shape"][1:], actual[1:])
    ):
        raise manifest_lib.BundleError(
            f"load_bundle: {path}: the {role} tensor has shape "
            f"{format_shape(actual)} but the manifest says "
            f"{role}.shape={spec['shape']}."
        )
    scale, zero_point = detail.get("quantization", (0.0, 0))
    scale, zero_point = float(scale), int(zero_point)
    declared = spec.get("quantization")
    if declared is not None and (
        not math.isclose(declared["scale"], scale, rel_tol=1e-6)
        or declared["zero_point"] != zero_point
    ):
        raise manifest_lib.BundleError(
            f"load_bundle: {path}: the {role} tensor is quantized with "
            f"scale={scale}, zero_point={zero_point} but the manifest says "
            f"{role}.quantization={declared}."
        )
    return scale, zero_point
