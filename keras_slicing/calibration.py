"""Exact batch-normalization statistics per rate, recomputed after training."""

import keras
import numpy as np

from keras_slicing import graph
from keras_slicing import keras_internals
from keras_slicing import rates as rates_lib
from keras_slicing.layers.batch_normalization import SlicedBatchNormalization


class _MomentAccumulator:
    """Pools per-batch moments into population mean and variance (float64)."""

    def __init__(self):
        self.totals = {}

    def add(self, layer, row, shape, mean, variance):
        count = int(np.prod(shape[:-1]))
        mean = keras.ops.convert_to_numpy(mean).astype(np.float64)
        square = keras.ops.convert_to_numpy(variance).astype(np.float64) + mean**2
        key = (id(layer), int(row))
        old_count, old_sum, old_square = self.totals.get(key, (0, 0.0, 0.0))
        self.totals[key] = (
            old_count + count,
            old_sum + count * mean,
            old_square + count * square,
        )

    def finish(self, layer, row):
        count, total, square = self.totals[(id(layer), int(row))]
        mean = total / count
        return mean, np.maximum(square / count - mean**2, 0.0)


def calibrate_batchnorm(model, data, rates=None, batch_size=256, verbose=0):
    """Recomputes every `SlicedBatchNormalization`'s statistics per rate.

    Moving averages learned while the widths were sampled are noisy; this
    runs the calibration data through the model at each rate, normalizing
    with batch statistics as in training, and stores the exact (pooled over
    all examples, not exponentially averaged) mean and variance of each
    layer's input as that rate's statistics.

    Args:
        model: A functional model with a rate input.
        data: Calibration inputs: an array (a list of arrays for several
            data inputs), a tuple `(x, y)` or `(x, y, sample_weight)` of
            arrays (only `x` is used), or an iterable of batches (a
            `tf.data` dataset of `(x, y)` is fine; `y` is ignored).
        rates: Rates to calibrate; each must be declared by every sliced
            batch-norm layer. Defaults to the rates declared by the layers.
        batch_size: Batch size for array data. Defaults to `256`.
        verbose: `0` (silent) or `1`: a Keras progress bar per rate over
            the batches run (`N/Unknown` for an iterable without length).
            Defaults to `0`.

    Returns:
        The tuple of calibrated rates.
    """
    layers = [
        layer for layer in keras_internals.all_sublayers(model)
        if isinstance(layer, SlicedBatchNormalization)
    ]
    if not layers:
        raise ValueError(
            "calibrate_batchnorm: the model has no SlicedBatchNormalization "
            "layer."
        )
    if rates is None:
        rates = sorted({r for layer in layers for r in layer.declared_rates})
        rates = tuple(reversed(rates))
    rates = rates_lib.validate_rates(rates, "calibrate_batchnorm: rates")
    rows = {rate: [layer.row_of(rate) for layer in layers] for rate in rates}
    rate_ids = {id(x) for x in graph.rate_inputs(model)}

    accumulator = _MomentAccumulator()
    for layer in layers:
        layer._calibration = accumulator
    try:
        for rate in rates:
            seen = 0
            if verbose:
                print(f"calibrate_batchnorm: rate {rates_lib.format_rate(rate)}")
            progress = keras.utils.Progbar(
                _num_batches(data, batch_size), verbose=verbose, unit_name="batch"
            )
            for batch in _batches(data, batch_size):
                seen += 1
                progress.update(seen)
                size = len(keras.tree.flatten(batch)[0])
                model(
                    _feed(model, rate_ids, batch, np.full((size,), rate, "float32")),
                    training=False,
                )
            if not seen:
                raise ValueError(
                    "calibrate_batchnorm: the calibration data holds no batch."
                )
    finally:
        for layer in layers:
            layer._calibration = None

    for rate in rates:
        for layer, row in zip(layers, rows[rate]):
            if (id(layer), row) not in accumulator.totals:
                continue  # the layer is not on the path at this rate
            mean, variance = accumulator.finish(layer, row)
            _write_row(layer.moving_mean, row, mean)
            _write_row(layer.moving_variance, row, variance)
    return rates


def _write_row(variable, row, values):
    table = np.array(keras.ops.convert_to_numpy(variable))
    table[row, : len(values)] = values
    variable.assign(table)


def _num_batches(data, batch_size):
    """How many batches `_batches` yields; None (unknown) for an iterable."""
    if isinstance(data, tuple) and data and _is_arrays(data[0]):
        data = data[0]
    if _is_arrays(data):
        return -(-len(keras.tree.flatten(data)[0]) // batch_size)
    return None


def _batches(data, batch_size):
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


def _feed(model, rate_ids, batch, rate_values):
    flat = keras.tree.flatten(batch)
    expected = len(model.inputs) - len(rate_ids)
    if len(flat) != expected:
        raise ValueError(
            f"calibrate_batchnorm: model '{model.name}' has {expected} data "
            f"input(s) but a calibration batch holds {len(flat)} array(s). "
            "Pass x, (x, y), or a dataset of x or (x, y) batches."
        )
    data = iter(flat)
    feed = [rate_values if id(x) in rate_ids else next(data) for x in model.inputs]
    return [keras.ops.convert_to_tensor(value) for value in feed]
