import keras
import numpy as np
from keras import ops

from keras_slicing import backend
from keras_slicing import rates as rates_lib
from keras_slicing.layers.base import SlicedLayerMixin
from keras_slicing.layers.base import affine_values
from keras_slicing.layers.base import leading_values
from keras_slicing.layers.base import plain_config

# Not a variable: saving it beside the weights keeps get_weights() as in
# keras.layers.BatchNormalization.
_STALE_KEY = "stale_rows"


@keras.saving.register_keras_serializable(package="keras_slicing")
class SlicedBatchNormalization(SlicedLayerMixin, keras.layers.BatchNormalization):
    """Switchable `BatchNormalization`: one set of moving statistics per rate.

    A channel's batch statistics depend on the width of the network that
    produced it, so each declared rate keeps its own moving mean and variance
    (as in the paper's code and Slimmable Networks), while `gamma` and `beta`
    are shared and sliced. The moving statistics are stored as
    `(len(rates), channels)` variables; the width follows the input. Rates
    that give the same number of active groups share one row. Calling the
    layer at an undeclared rate is an error that lists the declared ones.
    After training, `keras_slicing.calibrate_batchnorm` recomputes exact
    statistics (US-Nets' post-training calibration); `SlicingModel.fit` does
    so when it ends. Channels-last only.

    The layer knows which rows were computed for the current weights:
    `stale_rates` lists the declared rates whose statistics a training step
    of a `SlicingModel` (or a conversion) left behind, until
    `calibrate_batchnorm` recomputes them. `SlicingModel` warns when it
    evaluates or predicts with such a row, and `extract_submodel` and
    `export_tflite` refuse it. The list is saved with the weights.

    Args:
        rates: The slice rates that get statistics. `None` (the default)
            declares every width, `k / slice_groups` for `k = 1..slice_groups`.
        slice_groups: Number of contiguous slice groups of the channels.
            Defaults to `8`.
        **kwargs: All other arguments of `keras.layers.BatchNormalization`
            (`axis` must be `-1`; `renorm` is not supported).

    Call arguments:
        inputs: Channels-last tensor holding the active channels.
        rate: The slice rate in (0, 1] (a Python float or a tensor of equal
            values); it selects the row of statistics.
        training: Whether to normalize with batch statistics and update the
            rate's moving statistics.

    Example:

    >>> layer = SlicedBatchNormalization(rates=[1.0, 0.5])
    >>> layer.build((None, 16))
    >>> layer(np.random.rand(4, 8), 0.5, training=True).shape
    TensorShape([4, 8])

    Reference:
    - [Cai et al., 2020](https://arxiv.org/abs/1904.01831), Model Slicing.
    - [Yu et al., 2019](https://arxiv.org/abs/1812.08928), Slimmable Neural
      Networks.
    """

    follows_input_width = True

    def __init__(self, rates=None, slice_groups=8, **kwargs):
        if kwargs.get("renorm"):
            raise ValueError(
                "SlicedBatchNormalization does not support batch "
                f"renormalization. Received: renorm={kwargs['renorm']}"
            )
        super().__init__(**kwargs)
        self._init_slicing(slice_groups)
        if self.axis not in (-1,):
            raise ValueError(
                "SlicedBatchNormalization supports only axis=-1 (channels "
                f"last). Received: axis={self.axis}"
            )
        if rates is None:
            declared = tuple(
                k / self.slice_groups for k in range(self.slice_groups, 0, -1)
            )
            self.rates = None
        else:
            declared = rates_lib.validate_rates(rates, f"{self._owner()}: rates")
            self.rates = list(declared)
        self._row_groups = []
        self._declared = []
        for rate in declared:
            groups = rates_lib.active_groups(rate, self.slice_groups)
            if groups in self._row_groups:
                other = self._declared[self._row_groups.index(groups)]
                raise ValueError(
                    f"{self._owner()}: rates {other} and {rate} give the same "
                    f"width ({groups} of {self.slice_groups} groups); declare "
                    "only one of them."
                )
            self._row_groups.append(groups)
            self._declared.append(rate)
        # Host-side, not a weight: which rows no longer belong to the
        # weights (see stale_rates). Fresh statistics (the initializers'
        # or loaded ones) are trusted, as in keras.layers.BatchNormalization.
        self._stale = [False] * len(self._declared)

    @property
    def declared_rates(self):
        """The rates that have their own statistics, as a tuple."""
        return tuple(self._declared)

    @property
    def stale_rates(self):
        """Declared rates whose statistics predate the current weights.

        A training step of a `SlicingModel` changes the weights every row
        was computed for, and the moving averages it keeps lag behind them;
        `keras_slicing.calibrate_batchnorm` recomputes a row and clears it
        from this tuple.
        """
        return tuple(r for r, stale in zip(self._declared, self._stale) if stale)

    def mark_stale(self, rates=None):
        """Records that the statistics of `rates` (default: all) are stale.

        For code that changes the weights outside `SlicingModel.fit` and
        `train_on_batch` (which mark every row themselves), e.g. a
        conversion that copies one width's statistics into every row.
        """
        rows = range(len(self._declared)) if rates is None else [
            self.row_of(r) for r in rates
        ]
        for row in rows:
            self._stale[row] = True

    def _mark_calibrated(self, row):
        self._stale[int(row)] = False

    def save_own_variables(self, store):
        super().save_own_variables(store)
        store[_STALE_KEY] = np.array(self._stale, "bool")

    def load_own_variables(self, store):
        keys = list(store.keys())
        if _STALE_KEY in keys:
            stale = np.asarray(store[_STALE_KEY]).astype(bool).tolist()
            if len(stale) == len(self._stale):
                self._stale = stale
        super().load_own_variables({k: store[k] for k in keys if k != _STALE_KEY})

    def build(self, input_shape):
        channels = input_shape[-1]
        self._check_divisible(channels, "channels")
        stats_shape = (len(self._declared), channels)
        if self.scale:
            self.gamma = self.add_weight(
                shape=(channels,),
                name="gamma",
                initializer=self.gamma_initializer,
                regularizer=self.gamma_regularizer,
                constraint=self.gamma_constraint,
                trainable=True,
                autocast=False,
            )
        if self.center:
            self.beta = self.add_weight(
                shape=(channels,),
                name="beta",
                initializer=self.beta_initializer,
                regularizer=self.beta_regularizer,
                constraint=self.beta_constraint,
                trainable=True,
                autocast=False,
            )
        self.moving_mean = self.add_weight(
            shape=stats_shape,
            name="moving_mean",
            initializer=self.moving_mean_initializer,
            trainable=False,
            autocast=False,
        )
        self.moving_variance = self.add_weight(
            shape=stats_shape,
            name="moving_variance",
            initializer=self.moving_variance_initializer,
            trainable=False,
            autocast=False,
        )
        self.input_spec = keras.layers.InputSpec(ndim=len(input_shape))
        # A tuple: Keras tracks a list attribute as a TrackedList, which
        # torch.compile cannot pass to torch.mean (a graph break per call).
        self._reduction_axes = tuple(range(len(input_shape) - 1))
        self.built = True

    def row_of(self, rate):
        """Index of the statistics row for a Python `rate`, or a ValueError."""
        rate = rates_lib.validate_rate(rate, self._owner())
        groups = rates_lib.active_groups(rate, self.slice_groups)
        if groups not in self._row_groups:
            raise ValueError(self._undeclared_message(f"rate={rate}"))
        return self._row_groups.index(groups)

    def _undeclared_message(self, received):
        declared = ", ".join(rates_lib.format_rate(r) for r in self._declared)
        return (
            f"{self._owner()}: no batch-norm statistics for {received}. "
            f"Declared rates: [{declared}]. Add the rate to `rates=` (and "
            "calibrate it with keras_slicing.calibrate_batchnorm)."
        )

    def _row(self, rate):
        static = 1.0 if rate is None else backend.concrete_rate(rate, self._owner())
        if static is not None:
            return self.row_of(static)
        groups = self._groups(rate)
        if isinstance(groups, int):
            # Shape inference on JAX or PyTorch, where the rate holds no
            # value: every row has the same shape.
            return 0
        return backend.per_rate_tensor(
            rate, ("row", self.slice_groups, tuple(self._row_groups)),
            lambda: self._checked_row(groups),
        )

    def _checked_row(self, groups):
        matches = ops.equal(
            ops.convert_to_tensor(np.array(self._row_groups, "int32")), groups
        )
        backend.assert_true(
            ops.any(matches), self._undeclared_message("the rate passed")
        )
        return ops.argmax(ops.cast(matches, "int32"))

    def call(self, inputs, rate=None, training=None, mask=None):
        row = self._row(rate)
        n = backend.dim(inputs, -1)
        x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        if training and self.trainable:
            mean, variance = self._moments(x, mask)
            self._update_row(self.moving_mean, row, n, mean)
            self._update_row(self.moving_variance, row, n, variance)
        else:
            mean = ops.take(self.moving_mean, row, axis=0)[:n]
            variance = ops.take(self.moving_variance, row, axis=0)[:n]
        return self._normalize(x, mean, variance)

    def batch_moments(self, inputs, mask=None):
        """`(outputs, mean, variance)` normalizing `inputs` by their moments.

        What a training call computes, without updating any statistics:
        `keras_slicing.calibrate_batchnorm` pools these moments.
        """
        x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        mean, variance = self._moments(x, mask)
        return self._normalize(x, mean, variance), mean, variance

    def _normalize(self, x, mean, variance):
        n = backend.dim(x, -1)
        dtype = x.dtype
        outputs = ops.batch_normalization(
            x=x,
            mean=ops.cast(mean, dtype),
            variance=ops.cast(variance, dtype),
            axis=-1,
            offset=ops.cast(self.beta[:n], dtype) if self.center else None,
            scale=ops.cast(self.gamma[:n], dtype) if self.scale else None,
            epsilon=self.epsilon,
        )
        return ops.cast(outputs, self.compute_dtype)

    def _update_row(self, variable, row, n, batch_value):
        old = ops.take(variable, row, axis=0)
        head = old[:n] * self.momentum + ops.cast(
            batch_value, old.dtype
        ) * (1.0 - self.momentum)
        new_row = ops.concatenate([head, old[n:]], axis=0)
        variable.assign(
            ops.scatter_update(
                variable, ops.reshape(row, (1, 1)), ops.expand_dims(new_row, 0)
            )
        )

    def plain_layer(self, rate, input_shapes, name):
        """A `keras.layers.BatchNormalization` holding `rate`'s statistics."""
        n = input_shapes[0][-1]
        row = self.row_of(rate)
        statistics = [
            leading_values(variable, [None, n])[row]
            for variable in (self.moving_mean, self.moving_variance)
        ]
        plain = keras.layers.BatchNormalization.from_config(plain_config(self, name))
        return plain, affine_values(self, n) + statistics

    def get_config(self):
        return {
            **super().get_config(),
            "rates": self.rates,
            "slice_groups": self.slice_groups,
        }
