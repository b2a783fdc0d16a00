"""A verified keras-slicing bundle: one TFLite model per width."""

import collections
import copy
import math
import numbers
import os
import pathlib
import platform
import threading
import time
import warnings

import numpy as np

from keras_slicing_lite import manifest as manifest_lib
from keras_slicing_lite import runtime
from keras_slicing_lite.latency_profile import LatencyProfile

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32)


def load_bundle(path, num_threads=None, max_cached_shapes=8):
    """Verifies and loads a bundle written by `keras_slicing.export_tflite`.

    Everything is checked before anything is returned: the manifest's format
    and version, then the size and sha256 of every model file, then that each
    file loads and its input/output tensors match the manifest. A failure at
    any step raises and leaves nothing loaded.

    Args:
        path: The bundle directory (holding `manifest.json`).
        num_threads: Interpreter threads per call; `None` lets the runtime
            choose. Latency profiles are cached per thread count.
        max_cached_shapes: Interpreters kept per rate, one per input shape:
            resizing a TFLite interpreter costs as much as several calls, so
            each batch size seen recently keeps its own. Defaults to `8`.

    Returns:
        A `Bundle`.

    Raises:
        BundleError: (a `ValueError`) naming the file or manifest key that is
            missing, corrupted, or inconsistent.

    Example:

    >>> bundle = load_bundle("digits_bundle")
    >>> bundle.rates
    (1.0, 0.75, 0.5, 0.25)
    >>> bundle.predict(images, rate=0.5).shape
    (64, 10)
    """
    bundle_dir = pathlib.Path(path)
    manifest = manifest_lib.read_manifest(bundle_dir)
    contents = manifest_lib.verify_files(bundle_dir, manifest)
    return Bundle(bundle_dir, manifest, contents, num_threads, max_cached_shapes)


class Bundle:
    """A model at several widths, each a verified TFLite file.

    Build it with `load_bundle(path)`. Calls on one bundle are serialized
    (a TFLite interpreter is not thread-safe), so it can be shared between
    threads.

    Args:
        path: The bundle directory.
        manifest: The validated manifest dict.
        contents: `{rate: bytes}` of the verified model files.
        num_threads: Interpreter threads per call, or `None`.
        max_cached_shapes: Interpreters kept per rate, one per input shape.

    Example:

    >>> bundle = load_bundle("digits_bundle")
    >>> rate = bundle.select_rate(latency_budget_ms=0.5, batch_size=8)
    >>> logits = bundle.predict(images[:8], rate=rate)
    >>> result = bundle.predict_cascade(images, threshold=0.9)
    >>> result.rates, result.macs_fraction  # who answered, relative cost

    Reference:
    - [Cai et al., 2020](https://arxiv.org/abs/1904.01831), Model Slicing.
    """

    def __init__(self, path, manifest, contents, num_threads=None, max_cached_shapes=8):
        if (
            isinstance(max_cached_shapes, bool)
            or not isinstance(max_cached_shapes, int)
            or max_cached_shapes < 1
        ):
            raise ValueError(
                "load_bundle: max_cached_shapes must be a positive integer. "
                f"Received: max_cached_shapes={max_cached_shapes!r}"
            )
        if num_threads is not None and (
            isinstance(num_threads, bool)
            or not isinstance(num_threads, int)
            or num_threads < 1
        ):
            raise ValueError(
                "load_bundle: num_threads must be a positive integer or None. "
                f"Received: num_threads={num_threads!r}"
            )
        self.path = pathlib.Path(path)
        self._manifest = copy.deepcopy(manifest)
        self._entries = {float(e["rate"]): e for e in self._manifest["rates"]}
        self._contents = {float(r): c for r, c in contents.items()}
        self.num_threads = num_threads
        self._capacity = max_cached_shapes
        self._lock = threading.Lock()
        self._interpreters = {rate: collections.OrderedDict() for rate in self._entries}
        self._input_spec = self._manifest["input"]
        self._output_spec = self._manifest["output"]
        self._input_dtype = np.dtype(self._input_spec["dtype"])
        loaded = {}
        for rate in self.rates:
            loaded[rate] = self._load_and_check(rate)
        for rate, (shape, runner) in loaded.items():
            self._interpreters[rate][shape] = runner

    @property
    def rates(self):
        """The available rates, widest first."""
        return tuple(self._entries)

    @property
    def manifest(self):
        """A copy of the manifest."""
        return copy.deepcopy(self._manifest)

    @property
    def input_shape(self):
        """The input shape, `None` for the batch dimension."""
        return tuple(self._input_spec["shape"])

    @property
    def input_dtype(self):
        return self._input_dtype.name

    @property
    def output_shape(self):
        return tuple(self._output_spec["shape"])

    def rate_entry(self, rate):
        """The manifest entry of `rate`: file, sha256, bytes, params, macs, accuracy."""
        return dict(self._entries[self._rate(rate, "rate_entry")])

    def predict(self, x, rate=None):
        """Runs the model at `rate` on a batch.

        Args:
            x: Array of shape `(batch, *input_shape[1:])`, any batch size. A
                float model takes any floating dtype (cast to its own); a
                quantized integer model takes its integer dtype as is, or
                floats, which are quantized with the input's scale and zero
                point.
            rate: One of `rates`; `None` means the widest.

        Returns:
            A float32 array of shape `(batch, *output_shape[1:])`: quantized
            outputs are dequantized.
        """
        rate = self._rate(rate, "predict")
        return self._run(rate, self._prepare(x, "predict"))

    def _rates_arg(self, rates, owner):
        """The bundle rates named by a `rates=` argument (`None`: all)."""
        if rates is None:
            return set(self.rates)
        if isinstance(rates, (str, bytes)) or not hasattr(rates, "__iter__"):
            raise ValueError(
                f"{owner}: rates must be a list of the bundle's rates. "
                f"Received: rates={rates!r}"
            )
        chosen = {self._rate(r, owner) for r in rates}
        if not chosen:
            raise ValueError(f"{owner}: rates must not be empty.")
        return chosen

    def predict_cascade(self, x, threshold=0.9, rates=None, from_logits=None):
        """Answers each example with the narrowest width that is confident.

        Every example runs at the narrowest rate first; those whose largest
        class probability is below `threshold` run again at the next wider
        rate, and so on; the widest rate answers whatever is left. Most
        examples are easy, so the average cost is far below the widest
        rate's while accuracy stays close to it (the cascade application of
        the paper).

        Args:
            x: A batch, as for `predict`.
            threshold: Confidence in [0, 1] needed to stop early. `0` answers
                everything at the narrowest rate; above `1` sends everything
                to the widest. Defaults to `0.9`.
            rates: The rates to use, in any order; run narrowest first.
                Defaults to all rates of the bundle.
            from_logits: Whether the outputs are logits (softmax is applied)
                or already probabilities. `None` decides per call: outputs
                whose rows are non-negative and sum to 1 are probabilities.

        Returns:
            A `CascadeResult` with `outputs`, `predictions`, `rates` (the rate
            that answered each example), `mean_macs` (the average MACs spent
            per example, counting every width it ran at; `None` when the
            manifest has no MACs) and `macs_fraction` (relative to the widest
            rate used).
        """
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, numbers.Real)
            or not threshold >= 0.0
        ):
            raise ValueError(
                "predict_cascade: threshold must be a number >= 0 (a "
                f"probability). Received: threshold={threshold!r}"
            )
        order = sorted(self._rates_arg(rates, "predict_cascade"))
        batch = self._prepare(x, "predict_cascade")
        n = batch.shape[0]
        outputs = np.zeros((n, *self._output_dims(n)[1:]), np.float32)
        answered_by = np.full(n, np.nan)
        spent = np.zeros(n)
        macs = {r: self._entries[r].get("macs") for r in order}
        count_macs = all(m is not None for m in macs.values())
        pending = np.arange(n)
        for position, rate in enumerate(order):
            if pending.size == 0:
                break
            out = self._run(rate, batch[pending])
            if count_macs:
                spent[pending] += macs[rate]
            if position == len(order) - 1:
                accept = np.ones(pending.size, bool)
            else:
                confidence = _probabilities(out, from_logits).max(axis=-1)
                accept = confidence >= threshold
            outputs[pending[accept]] = out[accept]
            answered_by[pending[accept]] = rate
            pending = pending[~accept]
        mean_macs = float(spent.mean()) if count_macs and n else None
        widest = macs[order[-1]] if count_macs else None
        return CascadeResult(
            outputs=outputs,
            rates=answered_by,
            mean_macs=mean_macs,
            macs_fraction=(
                mean_macs / widest if mean_macs is not None and widest else None
            ),
        )

    def profile(
        self,
        batch_sizes=DEFAULT_BATCH_SIZES,
        repeats=30,
        warmup=3,
        cache=True,
        refresh=False,
    ):
        """Measures the latency of every rate and batch size on this device.

        Calls are interleaved (each repeat runs every rate and batch size
        once) so that a slow moment of the machine hits all widths alike;
        the profile holds the median, 90th percentile and mean per cell.

        Args:
            batch_sizes: Batch sizes to measure. Defaults to
                `(1, 2, 4, 8, 16, 32)`.
            repeats: Timed calls per cell. Defaults to `30`.
            warmup: Untimed calls per cell first. Defaults to `3`.
            cache: `True` caches the profile in `<bundle dir>.latency.json`
                beside the bundle (the profile belongs to the device, not to
                the bundle, so it is not written inside it); a path caches it
                there; `False` never reads nor writes a cache. A cached
                profile is reused only when it was measured for the same
                files, runtime, thread count, machine and batch sizes. The
                file is replaced atomically; a cache that cannot be read is
                measured again and a cache that cannot be written only warns.
            refresh: Measure even when a matching cache exists.

        Returns:
            A `LatencyProfile`.
        """
        sizes = _check_batch_sizes(batch_sizes)
        for name, value, low in (("repeats", repeats, 1), ("warmup", warmup, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(
                    f"profile: {name} must be an integer >= {low}. "
                    f"Received: {name}={value!r}"
                )
        cache_path = self._cache_path(cache)
        key = self._profile_key(sizes)
        if cache_path is not None and not refresh and cache_path.exists():
            try:
                cached = LatencyProfile.load(cache_path)
            except (OSError, ValueError) as error:
                warnings.warn(
                    f"profile: ignoring unreadable latency cache {cache_path} "
                    f"({error}); measuring again.",
                    stacklevel=2,
                )
            else:
                if cached.key == key:
                    return cached
        result = self._measure(sizes, repeats, warmup, key)
        if cache_path is not None:
            try:
                result.save(cache_path)
            except OSError as error:
                warnings.warn(
                    f"profile: could not write the latency cache {cache_path}: "
                    f"{error}. Pass cache=PATH to a writable file.",
                    stacklevel=2,
                )
        return result

    def select_rate(
        self,
        latency_budget_ms=None,
        macs_budget=None,
        batch_size=1,
        profile=None,
        statistic="p90",
        fallback_to_narrowest=False,
    ):
        """The widest rate whose cost fits every given budget.

        Args:
            latency_budget_ms: Most milliseconds one call on `batch_size`
                examples may take, judged by `statistic` of the latency
                profile.
            macs_budget: Most multiply-accumulates per example, from the
                manifest.
            batch_size: Batch size the latency budget is for. Defaults to 1.
            profile: A `LatencyProfile`; `None` uses `self.profile()` (the
                cached measurement, or a new one).
            statistic: `"p50"`, `"p90"` or `"mean"`. Defaults to `"p90"`, so
                the budget holds for nine calls in ten, not just half.
            fallback_to_narrowest: What to do when no rate fits: `False`
                raises a `ValueError` (the budget cannot be met here); `True`
                returns the narrowest rate, the cheapest possible answer.

        Returns:
            A rate (float) from `rates`.
        """
        if latency_budget_ms is None and macs_budget is None:
            raise ValueError(
                "select_rate: give latency_budget_ms, macs_budget or both. "
                "Received: latency_budget_ms=None, macs_budget=None"
            )
        for name, value in (
            ("latency_budget_ms", latency_budget_ms),
            ("macs_budget", macs_budget),
        ):
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, numbers.Real)
                or not value >= 0
            ):
                raise ValueError(
                    f"select_rate: {name} must be a number >= 0. "
                    f"Received: {name}={value!r}"
                )
        if macs_budget is not None:
            missing = [r for r in self.rates if self._entries[r].get("macs") is None]
            if missing:
                raise ValueError(
                    "select_rate: the manifest has no MACs for rates "
                    f"{_format_rates(missing)}, so macs_budget cannot be used."
                )
        if latency_budget_ms is not None and profile is None:
            profile = self.profile()
        costs = []
        for rate in self.rates:
            cost = {}
            if latency_budget_ms is not None:
                cost["latency_ms"] = profile.latency_ms(rate, batch_size, statistic)
            if macs_budget is not None:
                cost["macs"] = self._entries[rate]["macs"]
            fits = (
                latency_budget_ms is None or cost["latency_ms"] <= latency_budget_ms
            ) and (macs_budget is None or cost["macs"] <= macs_budget)
            if fits:
                return rate
            costs.append(cost)
        if fallback_to_narrowest:
            return self.rates[-1]
        raise ValueError(
            "select_rate: no rate fits the budget. Received: "
            f"latency_budget_ms={latency_budget_ms}, macs_budget={macs_budget}"
            f" (batch_size={batch_size}); the narrowest rate "
            f"{self.rates[-1]:g} costs {costs[-1]}. Raise the budget or pass "
            "fallback_to_narrowest=True."
        )

    def _rate(self, rate, owner):
        if rate is None:
            return self.rates[0]
        if (
            isinstance(rate, bool)
            or not isinstance(rate, numbers.Real)
            or not math.isfinite(float(rate))
        ):
            raise ValueError(
                f"{owner}: rate must be one of the bundle's rates "
                f"{_format_rates(self.rates)}. Received: rate={rate!r}"
            )
        for known in self._entries:
            if abs(known - float(rate)) <= 1e-9:
                return known
        raise ValueError(
            f"{owner}: rate={float(rate):g} is not in this bundle. Available "
            f"rates: {_format_rates(self.rates)}"
        )

    def _prepare(self, x, owner):
        """Checks a batch against the input spec; returns it in the model dtype."""
        try:
            x = np.asarray(x)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{owner}: x is not array-like: {error}") from None
        expected = self.input_shape
        shown = _format_shape(expected)
        if x.ndim != len(expected):
            hint = (
                " For a single example add the batch axis: x[None]."
                if x.ndim == len(expected) - 1
                else ""
            )
            raise ValueError(
                f"{owner}: expected input of shape {shown}. "
                f"Received: x.shape={x.shape}.{hint}"
            )
        for axis, (want, got) in enumerate(zip(expected[1:], x.shape[1:]), 1):
            if want is not None and want != got:
                raise ValueError(
                    f"{owner}: expected input of shape {shown}; axis {axis} "
                    f"should be {want}. Received: x.shape={x.shape}"
                )
        model_dtype = self._input_dtype
        if model_dtype.kind == "f":
            if x.dtype.kind != "f":
                raise ValueError(
                    f"{owner}: this bundle takes floating inputs "
                    f"({model_dtype.name}). Received: x.dtype={x.dtype}. "
                    "Convert (and scale) the data as in training first."
                )
            return np.ascontiguousarray(x, dtype=model_dtype)
        if x.dtype == model_dtype:
            return np.ascontiguousarray(x)
        scale, zero_point = self._input_quantization
        if x.dtype.kind == "f" and scale > 0:
            info = np.iinfo(model_dtype)
            q = np.round(x / scale) + zero_point
            return np.ascontiguousarray(np.clip(q, info.min, info.max), model_dtype)
        accepted = f"{model_dtype.name}" + (" or floating" if scale > 0 else "")
        raise ValueError(
            f"{owner}: this bundle takes {accepted} inputs. "
            f"Received: x.dtype={x.dtype}"
        )

    def _output_dims(self, n):
        return (n, *(d if d is not None else 0 for d in self.output_shape[1:]))

    def _run(self, rate, batch):
        n = batch.shape[0]
        if n == 0:
            return np.zeros(self._output_dims(0), np.float32)
        with self._lock:
            interpreter, input_index, output_index = self._runner(rate, batch.shape)
            interpreter.set_tensor(input_index, batch)
            interpreter.invoke()
            out = interpreter.get_tensor(output_index)
        scale, zero_point = self._output_quantization
        if out.dtype.kind in "iu" and scale > 0:
            return ((out.astype(np.float32) - zero_point) * scale).astype(np.float32)
        return out.astype(np.float32, copy=True)

    def _runner(self, rate, shape):
        cache = self._interpreters[rate]
        shape = tuple(int(d) for d in shape)
        if shape in cache:
            cache.move_to_end(shape)
            return cache[shape]
        interpreter = runtime.make_interpreter(self._contents[rate], self.num_threads)
        detail = interpreter.get_input_details()[0]
        if tuple(detail["shape"]) != shape:
            interpreter.resize_tensor_input(detail["index"], list(shape))
        interpreter.allocate_tensors()
        runner = (interpreter, detail["index"], interpreter.get_output_details()[0]["index"])
        cache[shape] = runner
        while len(cache) > self._capacity:
            cache.popitem(last=False)
        return runner

    def _load_and_check(self, rate):
        """Loads the file of `rate` and checks its tensors against the manifest."""
        entry = self._entries[rate]
        path = self.path / entry["file"]
        try:
            interpreter = runtime.make_interpreter(
                self._contents[rate], self.num_threads
            )
            interpreter.allocate_tensors()
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
        inputs = interpreter.get_input_details()
        outputs = interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise manifest_lib.BundleError(
                f"load_bundle: {path} has {len(inputs)} inputs and "
                f"{len(outputs)} outputs; a bundle model has exactly one of each."
            )
        quantization = {}
        for role, detail, spec in (
            ("input", inputs[0], self._input_spec),
            ("output", outputs[0], self._output_spec),
        ):
            quantization[role] = _check_tensor(path, role, detail, spec)
        if rate == self.rates[0]:
            self._input_quantization = quantization["input"]
            self._output_quantization = quantization["output"]
        elif (quantization["input"], quantization["output"]) != (
            self._input_quantization,
            self._output_quantization,
        ):
            raise manifest_lib.BundleError(
                f"load_bundle: {path} quantizes its input/output differently "
                "from the widest rate's file; every width must share them."
            )
        shape = tuple(int(d) for d in inputs[0]["shape"])
        return shape, (interpreter, inputs[0]["index"], outputs[0]["index"])

    def _cache_path(self, cache):
        if cache is True:
            resolved = self.path.resolve()
            return resolved.with_name(resolved.name + ".latency.json")
        if cache is False or cache is None:
            return None
        if isinstance(cache, (str, os.PathLike)):
            return pathlib.Path(cache)
        raise ValueError(
            "profile: cache must be True, False or a file path. "
            f"Received: cache={cache!r}"
        )

    def _profile_key(self, sizes):
        return {
            "sha256": [self._entries[r]["sha256"].lower() for r in self.rates],
            "runtime": runtime.runtime_name(),
            "runtime_version": runtime.runtime_version(),
            "num_threads": self.num_threads,
            "machine": platform.machine(),
            "system": platform.system(),
            "cpu_count": os.cpu_count(),
            "batch_sizes": list(sizes),
        }

    def _measure(self, sizes, repeats, warmup, key):
        if any(d is None for d in self.input_shape[1:]):
            raise ValueError(
                "profile: the input shape has variable dimensions "
                f"{_format_shape(self.input_shape)}; profiling needs a fixed "
                "example shape."
            )
        self._capacity = max(self._capacity, len(sizes))
        rng = np.random.default_rng(0)
        batches = {}
        for size in sizes:
            shape = (size, *self.input_shape[1:])
            if self._input_dtype.kind == "f":
                batches[size] = rng.standard_normal(shape).astype(self._input_dtype)
            else:
                info = np.iinfo(self._input_dtype)
                batches[size] = rng.integers(
                    info.min, info.max, shape, endpoint=True
                ).astype(self._input_dtype)
        cells = [(r, s) for s in sizes for r in self.rates]
        for rate, size in cells:
            for _ in range(warmup + 1):
                self._run(rate, batches[size])
        samples = {cell: [] for cell in cells}
        for _ in range(repeats):
            for rate, size in cells:
                start = time.perf_counter_ns()
                self._run(rate, batches[size])
                samples[(rate, size)].append((time.perf_counter_ns() - start) / 1e6)
        table = {}
        for (rate, size), values in samples.items():
            values = np.asarray(values)
            table.setdefault(rate, {})[size] = {
                "p50": float(np.percentile(values, 50)),
                "p90": float(np.percentile(values, 90)),
                "mean": float(values.mean()),
            }
        return LatencyProfile(table, key=key)

    def __repr__(self):
        name = self._manifest.get("model_name", "?")
        return (
            f"Bundle({str(self.path)!r}, model_name={name!r}, "
            f"rates=[{_format_rates(self.rates)}])"
        )


class CascadeResult:
    """The answer of `Bundle.predict_cascade`.

    Attributes:
        outputs: float32 outputs of the width that answered each example.
        predictions: Arg-max class of each example.
        rates: The rate that answered each example.
        mean_macs: Average MACs per example over all widths it ran at, or
            `None` when the manifest has no MACs.
        macs_fraction: `mean_macs` relative to the widest rate used.
    """

    def __init__(self, outputs, rates, mean_macs, macs_fraction):
        self.outputs = outputs
        self.predictions = outputs.argmax(axis=-1)
        self.rates = rates
        self.mean_macs = mean_macs
        self.macs_fraction = macs_fraction

    def accuracy(self, labels):
        """Fraction of `predictions` equal to integer `labels`."""
        labels = np.asarray(labels).reshape(-1)
        if labels.shape != self.predictions.shape:
            raise ValueError(
                f"CascadeResult.accuracy: expected {self.predictions.shape[0]} "
                f"labels. Received: labels.shape={labels.shape}"
            )
        return float(np.mean(self.predictions == labels))

    def __repr__(self):
        return (
            f"CascadeResult(n={self.predictions.shape[0]}, "
            f"mean_macs={self.mean_macs}, macs_fraction={self.macs_fraction})"
        )


def _check_tensor(path, role, detail, spec):
    """Compares a tensor of the file with the manifest; returns (scale, zero_point)."""
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
            f"{_format_shape(actual)} but the manifest says "
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


def _check_batch_sizes(batch_sizes):
    try:
        sizes = sorted(set(batch_sizes))
    except TypeError:
        sizes = None
    if not sizes or any(
        isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1
        for s in sizes
    ):
        raise ValueError(
            "profile: batch_sizes must be a non-empty list of positive "
            f"integers. Received: batch_sizes={batch_sizes!r}"
        )
    return tuple(int(s) for s in sizes)


def _probabilities(outputs, from_logits):
    if from_logits is None:
        sums = outputs.sum(axis=-1)
        from_logits = not (
            np.all(outputs >= 0) and np.allclose(sums, 1.0, atol=1e-3)
        )
    if not from_logits:
        return outputs
    shifted = outputs - outputs.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def _format_rates(rates):
    return ", ".join(format(r, "g") for r in rates)


def _format_shape(shape):
    return "(" + ", ".join("batch" if i == 0 else str(d) for i, d in enumerate(shape)) + ")"
