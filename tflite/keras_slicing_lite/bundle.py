"""A verified keras-slicing bundle: a TFLite model per width, as one file
per width or as one file with a signature per width.

`Bundle` is the API; the work beneath it lives beside it: `inputs.py`
checks and converts batches, `interpreters.py` loads and runs the files,
`cascade.py` and `profiling.py` hold the cascade and the latency profile.
"""

import copy
import math
import numbers
import pathlib

import numpy as np

from keras_slicing_lite import cascade
from keras_slicing_lite import inputs
from keras_slicing_lite import manifest as manifest_lib
from keras_slicing_lite import profiling
from keras_slicing_lite.interpreters import Interpreters
from keras_slicing_lite.profiling import DEFAULT_BATCH_SIZES


def load_bundle(path, num_threads=None, max_cached_shapes=8):
    """Verifies and loads a bundle written by `keras_slicing.export_tflite`.

    Everything is checked before anything is returned: the manifest's format
    and version, then the size and sha256 of every model file, then that each
    file (each signature, for a single-file bundle) loads and runs and its
    input/output tensors match the manifest. A failure at
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
        self._input_spec = self._manifest["input"]
        self._output_spec = self._manifest["output"]
        self._input_dtype = np.dtype(self._input_spec["dtype"])
        self._interpreters = Interpreters(
            self.path, self._manifest, contents, num_threads, max_cached_shapes
        )
        self._input_quantization = self._interpreters.input_quantization

    @property
    def rates(self):
        """The available rates, widest first."""
        return tuple(self._entries)

    @property
    def manifest(self):
        """A copy of the manifest."""
        return copy.deepcopy(self._manifest)

    @property
    def num_threads(self):
        """Interpreter threads per call, or `None` (the runtime chooses)."""
        return self._interpreters.num_threads

    @num_threads.setter
    def num_threads(self, value):
        self._interpreters.num_threads = value

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

    @property
    def output_kind(self):
        """What the output means (`outputs.KINDS`); `"multiclass"` for a v1 bundle."""
        return manifest_lib.output_kind(self._manifest)

    @property
    def metric(self):
        """The name of the evaluation each rate entry holds, e.g. `"accuracy"`."""
        return manifest_lib.metric(self._manifest)

    def rate_entry(self, rate):
        """The manifest entry of `rate`: file, sha256, bytes, params, macs and
        the evaluation under the key `metric`."""
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
        return self._run(rate, self.prepare(x, "predict"))

    def run_prepared(self, batch, rate):
        """Runs a batch already returned by `prepare`, at one of `rates`.

        `predict` without the checks: for callers (the server, the profiler)
        that prepared the batch once and call many times.
        """
        return self._run(self._rate(rate, "run_prepared"), batch)

    @property
    def input_quantization(self):
        """`(scale, zero_point)` of the input; a scale of 0 means not quantized."""
        return self._input_quantization

    def keep_interpreters(self, count):
        """Keeps at least `count` interpreters per rate (one per batch size)."""
        self._interpreters.keep_at_least(count)

    def resolve_rates(self, rates=None, owner="Bundle"):
        """The set of bundle rates named by a `rates=` argument.

        Args:
            rates: A list of the bundle's rates, or `None` for all of them.
            owner: The name errors start with.

        Raises:
            ValueError: naming a rate that is not in the bundle.
        """
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
            threshold: Confidence in [0, 1] needed to stop early (see
                `outputs.confidence`: the largest class probability, or
                `max(p, 1 - p)` of a binary output). `0` answers everything
                at the narrowest rate. Defaults to `0.9`.
            rates: The rates to use, in any order; run narrowest first.
                Defaults to all rates of the bundle.
            from_logits: Whether the outputs are logits (softmax or sigmoid
                is applied) or already probabilities. `None` follows the
                manifest's `output_kind`; for a v1 bundle it decides per
                call (rows that are non-negative and sum to 1 are
                probabilities).

        Returns:
            A `CascadeResult` with `outputs`, `predictions`, `rates` (the rate
            that answered each example), `mean_macs` (the average MACs spent
            per example, counting every width it ran at; `None` when the
            manifest has no MACs) and `macs_fraction` (relative to the widest
            rate used).
        """
        return cascade.predict_cascade(self, x, threshold, rates, from_logits)

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
        return profiling.profile(self, batch_sizes, repeats, warmup, cache, refresh)

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
        return profiling.select_rate(
            self,
            latency_budget_ms,
            macs_budget,
            batch_size,
            profile,
            statistic,
            fallback_to_narrowest,
        )

    def _rate(self, rate, owner):
        if rate is None:
            return self.rates[0]
        if (
            isinstance(rate, bool)
            or not isinstance(rate, numbers.Real)
            or not _finite(rate)
        ):
            raise ValueError(
                f"{owner}: rate must be one of the bundle's rates "
                f"{profiling.format_rates(self.rates)}. Received: rate={rate!r}"
            )
        for known in self._entries:
            if abs(known - float(rate)) <= 1e-9:
                return known
        raise ValueError(
            f"{owner}: rate={float(rate):g} is not in this bundle. Available "
            f"rates: {profiling.format_rates(self.rates)}"
        )

    def prepare(self, x, owner="predict"):
        """Checks a batch against the input spec; returns it in the model dtype.

        Floats are cast to a float model's dtype, or quantized for an integer
        model; an array already in the model's dtype is not copied.

        Args:
            x: Array of shape `(batch, *input_shape[1:])`.
            owner: The name errors start with.

        Raises:
            ValueError: naming the shape or dtype received and the expected.
        """
        return inputs.prepare(
            x, self.input_shape, self._input_dtype, self._input_quantization, owner
        )

    def _output_dims(self, n):
        return (n, *(d if d is not None else 0 for d in self.output_shape[1:]))

    def _run(self, rate, batch):
        if batch.shape[0] == 0:
            return np.zeros(self._output_dims(0), np.float32)
        return self._interpreters.run(rate, batch)

    def __repr__(self):
        name = self._manifest.get("model_name", "?")
        return (
            f"Bundle({str(self.path)!r}, model_name={name!r}, "
            f"rates=[{profiling.format_rates(self.rates)}])"
        )


def _finite(value):
    # float() of an integer of hundreds of digits overflows instead of
    # giving infinity.
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False
