"""Exact batch-normalization statistics per rate, recomputed after training."""

import warnings
import weakref

import keras
import numpy as np

from keras_slicing import checks
from keras_slicing import graph
from keras_slicing import keras_internals
from keras_slicing import rates as rates_lib
from keras_slicing.keras_internals import tracking
from keras_slicing.layers.batch_normalization import SlicedBatchNormalization


def calibrate_batchnorm(
    model, data, rates=None, batch_size=256, steps=None, verbose=0
):
    """Recomputes every `SlicedBatchNormalization`'s statistics per rate.

    Moving averages learned while the widths were sampled lag behind the
    weights; this runs the calibration data through the model at each rate,
    normalizing with batch statistics as in training, and stores the exact
    (pooled over all examples, not exponentially averaged) mean and variance
    of each layer's input as that rate's statistics. The rows it writes are
    no longer in the layers' `stale_rates`. `SlicingModel.fit` calls it when
    it ends (see its `calibrate_batchnorm` argument).

    Args:
        model: A functional model with a rate input.
        data: Calibration inputs: an array (a list of arrays for several
            data inputs), a tuple `(x, y)` or `(x, y, sample_weight)` of
            arrays (only `x` is used), or an iterable of batches (a
            `tf.data` dataset of `(x, y)` is fine; `y` is ignored). It is
            read once, whatever the number of rates.
        rates: Rates to calibrate; each must be declared by every sliced
            batch-norm layer. Defaults to the rates declared by all of them.
        batch_size: Batch size for array data. Defaults to `256`.
        steps: Number of batches to read. Defaults to all of `data`.
        verbose: `0` (silent) or `1`: a Keras progress bar over the batches
            run (`N/Unknown` for an iterable without length). Defaults to `0`.

    Returns:
        The tuple of calibrated rates.
    """
    layers = batchnorm_layers(model)
    if not layers:
        raise ValueError(
            "calibrate_batchnorm: the model has no SlicedBatchNormalization "
            "layer."
        )
    if rates is None:
        rates = set(layers[0].declared_rates)
        for layer in layers[1:]:
            rates &= set(layer.declared_rates)
        rates = tuple(sorted(rates, reverse=True))
    rates = rates_lib.validate_rates(rates, "calibrate_batchnorm: rates")
    if steps is not None and (
        isinstance(steps, bool) or not isinstance(steps, (int, np.integer))
        or steps < 1
    ):
        raise ValueError(
            "calibrate_batchnorm: steps must be a positive integer (batches) "
            f"or None (all the data). Received: steps={steps!r}"
        )
    for rate in rates:
        for layer in layers:
            layer.row_of(rate)  # an undeclared rate fails here, before any run
    moments = _moments_model(model, rates)
    pool = MomentPool()
    seen = 0
    total = _num_batches(data, batch_size)
    if steps is not None and total is not None:
        total = min(total, steps)
    progress = keras.utils.Progbar(total, verbose=verbose, unit_name="batch")
    for batch in batches(data, batch_size):
        values = moments.predict_on_batch(_data_only(model, batch))
        for key, (count, mean, variance) in zip(moments.keys, _triples(values)):
            pool.add(key, count, mean, variance)
        seen += 1
        progress.update(seen)
        if steps is not None and seen >= steps:
            break
    if not seen:
        raise _NoBatch("calibrate_batchnorm: the calibration data holds no batch.")
    # A layer off the path of a rate keeps that row (and its staleness).
    for (layer, row), (mean, variance) in pool.moments().items():
        _write_row(layer.moving_mean, row, mean)
        _write_row(layer.moving_variance, row, variance)
        layer._mark_calibrated(row)
    return rates


class MomentPool:
    """Per-channel moments pooled over batches: exact, not moving averages.

    `add` takes one batch's `count` (values per channel: batch and spatial
    positions), mean and (biased) variance under a key; `moments` gives
    every key's mean and variance over all the values added, as if
    computed on them at once.
    """

    def __init__(self):
        self._totals = {}

    def add(self, key, count, mean, variance):
        count = float(np.asarray(count))
        mean = np.asarray(mean, np.float64)
        square = np.asarray(variance, np.float64) + mean**2
        old = self._totals.get(key, (0.0, 0.0, 0.0))
        self._totals[key] = (
            old[0] + count, old[1] + count * mean, old[2] + count * square
        )

    def moments(self):
        """`{key: (mean, variance)}`, in the order the keys were first added."""
        pooled = {}
        for key, (count, total, square) in self._totals.items():
            mean = total / count
            pooled[key] = (mean, np.maximum(square / count - mean**2, 0.0))
        return pooled


class _BatchMoments(keras.layers.Layer):
    """Runs a `SlicedBatchNormalization` as in training, returning its moments.

    Outputs `(outputs, count, mean, variance)`, `count` being the number of
    values each channel's moments pool (batch and spatial positions).
    """

    # Its outputs are its input's channels and their per-channel moments:
    # at a narrow width, the active channels' (see keras_slicing.checks).
    follows_input_width = True

    def __init__(self, norm, **kwargs):
        super().__init__(**kwargs)
        self.norm = norm

    def call(self, inputs, mask=None):
        outputs, mean, variance = self.norm.batch_moments(inputs, mask)
        shape = keras.ops.shape(inputs)
        count = keras.ops.cast(shape[0], "float32")
        for size in shape[1:-1]:
            count = count * keras.ops.cast(size, "float32")
        return outputs, count, mean, variance


def _moments_model(model, rates):
    """A model of the data inputs giving every batch-norm input's moments.

    One graph holds every rate (static shapes, traced and compiled once by
    `predict_on_batch` on every backend); its `keys` name the
    `(layer, statistics row)` of each `(count, mean, variance)` output.
    Cached per model and rates: it shares the model's weights.
    """
    cache = _MOMENTS_MODELS.setdefault(model, {})
    if rates in cache:
        return cache[rates]
    sources = graph.data_inputs(model)
    inputs = [
        keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name) for t in sources
    ]
    keys, outputs = [], []

    def call_fn(rate):
        def run(layer, *args, **kwargs):
            if isinstance(layer, SlicedBatchNormalization):
                kwargs.pop("rate", None)
                kwargs.pop("training", None)
                out, count, mean, variance = _BatchMoments(layer)(*args, **kwargs)
                keys.append((layer, layer.row_of(rate)))
                outputs.extend([count, mean, variance])
                return out
            if graph.is_functional(layer) and any(
                isinstance(inner, SlicedBatchNormalization)
                for inner in layer._flatten_layers(include_self=False, recursive=True)
            ):
                tensors = [
                    t for t in keras.tree.flatten((args, kwargs))
                    if isinstance(t, keras.KerasTensor)
                ]
                return graph.replay(layer, rate, run, inputs=tensors)
            return layer(*args, **kwargs)

        return run

    for rate in rates:
        graph.replay(model, rate, call_fn(rate), inputs=inputs)
    moments = keras.Model(
        inputs[0] if len(inputs) == 1 else inputs, outputs,
        name=f"{model.name}_batch_moments",
    )
    # The moments of a narrow width are narrow: sliced outputs by design.
    checks.check_model(moments, allow_sliced_outputs=True)
    with tracking.DotNotTrackScope():
        moments.keys = keys
    cache[rates] = moments
    return moments


_MOMENTS_MODELS = weakref.WeakKeyDictionary()


def _triples(values):
    values = list(values)
    return [values[i : i + 3] for i in range(0, len(values), 3)]


def _data_only(model, batch):
    """The data arrays of a calibration batch, checked against the model."""
    flat = keras.tree.flatten(batch)
    expected = len(graph.data_inputs(model))
    if len(flat) != expected:
        raise ValueError(
            f"calibrate_batchnorm: model '{model.name}' has {expected} data "
            f"input(s) but a calibration batch holds {len(flat)} array(s). "
            "Pass x, (x, y), or a dataset of x or (x, y) batches."
        )
    return flat[0] if len(flat) == 1 else flat


CALIBRATION_EXAMPLES = 2048


def calibrate_after_fit(model, x, batch_size, validation_split, steps):
    """`calibrate_batchnorm` on the training data `x` of a finished `fit`.

    Reads `steps` batches, or batches of `CALIBRATION_EXAMPLES` examples in
    all when `steps` is None; warns instead of failing when the data has no
    batch left (an exhausted generator), leaving the rows stale.
    """
    batch_size = batch_size or 32  # keras.Model.fit's default
    if isinstance(x, dict):
        x = [x[t.name] for t in graph.data_inputs(model)]  # Keras matches names
    if _is_arrays(x):
        arrays = [np.asarray(a) for a in keras.tree.flatten(x)]
        count = len(arrays[0])
        if validation_split:
            # keras.Model.fit holds out the last examples.
            count = int(np.ceil(count * (1.0 - validation_split)))
        wanted = CALIBRATION_EXAMPLES if steps is None else steps * batch_size
        picked = np.arange(count)
        if count > wanted:
            picked = np.sort(
                np.random.default_rng(0).choice(count, wanted, replace=False)
            )
        data = [a[picked] for a in arrays]
        data = data[0] if len(data) == 1 else data
        return calibrate_batchnorm(model, data, batch_size=batch_size)
    try:
        return calibrate_batchnorm(
            model, _bounded(x, CALIBRATION_EXAMPLES if steps is None else None),
            steps=steps,
        )
    except _NoBatch:
        warnings.warn(
            f"SlicingModel '{model.name}': fit could not read training "
            "batches to calibrate its batch-norm statistics (the data has "
            "none left); they stay stale. Call "
            "keras_slicing.calibrate_batchnorm(model, data) with training "
            "data.",
            StaleStatisticsWarning,
            stacklevel=3,
        )
        return ()


def _bounded(data, examples):
    """The batches of `data` until `examples` examples were read (None: all)."""
    seen = 0
    for batch in data:
        yield batch
        seen += len(keras.tree.flatten(batch)[0])
        if examples is not None and seen >= examples:
            return


class _NoBatch(ValueError):
    pass


def batchnorm_layers(model):
    """Every `SlicedBatchNormalization` of `model`, nested ones included."""
    return [
        layer for layer in keras_internals.all_sublayers(model)
        if isinstance(layer, SlicedBatchNormalization)
    ]


def stale_layers(model, rate):
    """Names of the batch-norm layers of `model` whose `rate` row is stale.

    `rate` is a Python float or a width configuration (`graph.LayerRates`),
    under which each layer runs at its own rate.
    """
    names = []
    for layer in batchnorm_layers(model):
        own = graph.rate_of(rate, layer)
        if _declares(layer, own) and layer.row_of(own) in _stale_rows(layer):
            names.append(layer.name)
    return names


def stale_message(model, rate, layers):
    shown = ", ".join(f"'{name}'" for name in layers[:5])
    more = f" and {len(layers) - 5} more" if len(layers) > 5 else ""
    return (
        f"model '{model.name}' at rate {graph.describe_rate(rate)}: the "
        f"batch-norm statistics of {shown}{more} were not computed for the "
        "current weights (they trained since, and the moving averages lag "
        "behind them; they can cost tens of points of accuracy). Call "
        "keras_slicing.calibrate_batchnorm(model, x_train) to recompute "
        "every width's statistics; SlicingModel.fit does it when it ends "
        "unless calibrate_batchnorm=False."
    )


def refuse_stale(model, rates, caller):
    """Raises a `ValueError` if any of `rates` would use stale rows."""
    for rate in rates:
        layers = stale_layers(model, rate)
        if layers:
            raise ValueError(f"{caller}: {stale_message(model, rate, layers)}")


def warn_if_stale(model, rate, stacklevel=3):
    """Warns (`StaleStatisticsWarning`) when `rate` would use stale rows."""
    layers = stale_layers(model, rate)
    if layers:
        warnings.warn(stale_message(model, rate, layers), StaleStatisticsWarning,
                      stacklevel=stacklevel)


class StaleStatisticsWarning(UserWarning):
    """A width ran with batch-norm statistics older than its weights."""


def _declares(layer, rate):
    groups = rates_lib.active_groups(rate, layer.slice_groups)
    return groups in layer._row_groups


def _stale_rows(layer):
    return {i for i, stale in enumerate(layer._stale) if stale}


def _num_batches(data, batch_size):
    """How many batches `batches` yields; None (unknown) for an iterable."""
    if isinstance(data, tuple) and data and _is_arrays(data[0]):
        data = data[0]
    if _is_arrays(data):
        return -(-len(keras.tree.flatten(data)[0]) // batch_size)
    return None


def _write_row(variable, row, values):
    table = np.array(keras.ops.convert_to_numpy(variable))
    table[row, : len(values)] = values
    variable.assign(table)


def batches(data, batch_size):
    """The input batches of calibration `data` (see `calibrate_batchnorm`)."""
    if isinstance(data, tuple) and data and _is_arrays(data[0]):
        data = data[0]  # (x, y) or (x, y, sample_weight), as Keras reads it
    if _is_arrays(data):
        arrays = keras.tree.flatten(data)
        for start in range(0, len(arrays[0]), batch_size):
            yield [a[start : start + batch_size] for a in arrays]
        return
    for batch in data:
        if isinstance(batch, tuple):
            batch = batch[0]  # (x, y) or (x, y, sample_weight)
        yield batch


def _is_arrays(data):
    """An array, or a list/tuple of arrays (one per data input)."""
    if hasattr(data, "shape"):
        return True
    return isinstance(data, (list, tuple)) and bool(data) and all(
        hasattr(a, "shape") for a in data
    )
