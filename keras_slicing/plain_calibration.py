"""Batch-norm statistics of a plain model cut from a sliced one, recomputed.

`extract_submodel` cuts a mixed width configuration, whose statistics no
`SlicedBatchNormalization` row holds, and sets every `BatchNormalization` of
the cut model to the exact moments of its input over calibration data.
"""

import keras

from keras_slicing import calibration
from keras_slicing import graph
from keras_slicing import keras_internals


def recalibrate(plain, data, batch_size, owner):
    """Sets every `BatchNormalization` of a plain model to its data's moments.

    Runs `data` (read as `keras_slicing.calibrate_batchnorm` reads it)
    through `plain` once with each batch-norm layer normalizing by its
    batch's moments, as in training (dropout stays off), and stores the
    moments of each layer's input pooled over all batches as its moving
    mean and variance.
    """
    norms = [
        layer for layer in keras_internals.all_sublayers(plain)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    nested = [n.name for n in norms if n not in plain.layers]
    if nested:
        raise ValueError(
            f"{owner}: the batch-norm layers {nested} of '{plain.name}' sit "
            "in a nested model, whose inputs cannot be read to recompute "
            "their statistics. Build the model flat."
        )
    keys, moments = [], []

    def run(layer, *args, **kwargs):
        if isinstance(layer, keras.layers.BatchNormalization):
            kwargs.pop("training", None)
            out, count, mean, variance = _PlainBatchMoments(layer)(*args, **kwargs)
            keys.append(layer)
            moments.extend([count, mean, variance])
            return out
        return layer(*args, **kwargs)

    sources = list(plain.inputs)
    inputs = [
        keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name) for t in sources
    ]
    graph.replay(plain, 1.0, run, inputs=inputs)
    runner = keras.Model(inputs[0] if len(inputs) == 1 else inputs, moments)
    pool = calibration.MomentPool()
    for batch in calibration.batches(data, batch_size):
        flat = keras.tree.flatten(batch)
        values = list(runner.predict_on_batch(flat[0] if len(flat) == 1 else flat))
        for i, layer in enumerate(keys):
            pool.add(layer, *values[3 * i : 3 * i + 3])
    pooled = pool.moments()
    if not pooled:
        raise ValueError(f"{owner}: calibration_data holds no batch.")
    for layer, (mean, variance) in pooled.items():
        layer.moving_mean.assign(mean.astype(layer.moving_mean.dtype))
        layer.moving_variance.assign(variance.astype(layer.moving_variance.dtype))


class _PlainBatchMoments(keras.layers.Layer):
    """Runs a `BatchNormalization` on its batch's moments, returning them.

    Outputs `(outputs, count, mean, variance)`, `count` being the number of
    values each channel's moments pool (batch and other axes).
    """

    def __init__(self, norm, **kwargs):
        super().__init__(**kwargs)
        self.norm = norm

    def call(self, inputs, mask=None):
        if mask is not None:
            raise ValueError(
                f"extract_submodel: batch-norm layer '{self.norm.name}' "
                "normalizes a masked input, whose statistics cannot be "
                "recomputed yet. Use a uniform configuration."
            )
        rank = len(inputs.shape)
        axis = self.norm.axis % rank
        axes = [i for i in range(rank) if i != axis]
        mean, variance = keras.ops.moments(inputs, axes)
        outputs = keras.ops.batch_normalization(
            inputs, mean, variance, axis=axis, offset=self.norm.beta,
            scale=self.norm.gamma, epsilon=self.norm.epsilon,
        )
        one = keras.ops.take(keras.ops.ones_like(inputs), 0, axis=axis)
        count = keras.ops.sum(keras.ops.cast(one, "float32"))
        return outputs, count, mean, variance
