"""How `SlicingModel` takes its inputs, with the rate or without it.

A `SlicingModel` is built on its data inputs plus a rate input, but it is
called, evaluated and predicted on the data alone (at full width), and the
rate may be fed too. This mixin is the one place that tells the two apart
and fills in or reshapes the rate: calling the model, the forward pass of a
training or test step (`_forward`, run by `keras_slicing/train_step.py`), and
Keras' `evaluate`, `test_on_batch`, `predict` and `predict_on_batch`, which
run at a fed rate. It is apart from `model.py` because none of it concerns
what the model is (its rates, scheduler, configuration), only how its inputs
reach the layers.

It reads what `SlicingModel` sets up: `_rate_flags` (which inputs are
rates), `_eval_rate` (the rate test steps run at) and `at_rate`; `evaluate`
orders its values by `_in_metrics_order` (`keras_slicing/compiling.py`).
"""

import contextlib

import keras
import numpy as np
from keras import ops

from keras_slicing import backend
from keras_slicing import calibration
from keras_slicing import fed_rates
from keras_slicing import graph


class SlicingRateInputs:
    """The rate-input handling of `SlicingModel` (a mixin of it)."""

    # Its entry points check fed rates themselves: `fed_rates.guard` leaves
    # such a model as it is.
    validates_fed_rates = True

    def __call__(self, inputs, *args, **kwargs):
        if not self._has_rate(inputs):
            inputs = self._with_rate(inputs, 1.0)
        inputs = self._with_rate_vectors(inputs, "__call__")
        return super().__call__(inputs, *args, **kwargs)

    def _forward(self, x, rate, training):
        """The outputs of data inputs `x` (or inputs with the rate) at `rate`.

        A Python float (or a mixed configuration's `LayerRates`) runs the
        `at_rate` model, whose shapes are static; a tensor rate fills the
        rate inputs, for the layers to slice by.
        """
        if self._has_rate(x):
            return self(x, training=training)
        if isinstance(rate, (float, graph.LayerRates)):
            flat = keras.tree.flatten(x)
            return self._width_forward(rate)(
                flat[0] if len(flat) == 1 else flat, training=training
            )
        return self(self._with_rate(x, rate), training=training)

    def evaluate(
        self, x=None, y=None, batch_size=None, verbose="auto",
        sample_weight=None, steps=None, callbacks=None, return_dict=False,
        **kwargs,
    ):
        """As `keras.Model.evaluate`, at full width (see `evaluate_rates`).

        Inputs that include the rate run at that rate. Without `return_dict`
        the values come in `metrics_names` order.
        """
        data, rate = self._data_and_rate(x, "evaluate")
        self._check_statistics(x, rate)
        with self._evaluating_at(rate):
            logs = super().evaluate(
                data, y, batch_size=batch_size,
                verbose=verbose, sample_weight=sample_weight, steps=steps,
                callbacks=callbacks, return_dict=True, **kwargs,
            )
        return logs if return_dict else self._in_metrics_order(logs)

    def test_on_batch(self, x, y=None, sample_weight=None, return_dict=False):
        data, rate = self._data_and_rate(x, "test_on_batch")
        self._check_statistics(x, rate)
        with self._evaluating_at(rate):
            logs = super().test_on_batch(
                data, y, sample_weight=sample_weight, return_dict=True
            )
        return logs if return_dict else self._in_metrics_order(logs)

    def predict(self, x, *args, **kwargs):
        data, rate = self._data_and_rate(x, "predict")
        self._check_statistics(x, rate, default=1.0)
        if rate is not None:
            return self._at_rate(rate).predict(data, *args, **kwargs)
        return super().predict(data, *args, **kwargs)

    def predict_on_batch(self, x):
        data, rate = self._data_and_rate(x, "predict_on_batch")
        self._check_statistics(x, rate, default=1.0)
        if rate is not None:
            return self._at_rate(rate).predict_on_batch(data)
        return super().predict_on_batch(data)

    def _check_statistics(self, x, rate, default=None):
        """Warns if the width that runs uses stale batch-norm statistics.

        `rate` is the fed rate known on the host, else None: then inputs
        without a rate run at `default` (the rate of the test steps when
        None); a fed rate known only in a graph is not checked.
        """
        if rate is None:
            if self._has_rate(x):
                return
            rate = self._eval_rate if default is None else default
        calibration.warn_if_stale(self, rate, stacklevel=4)

    @contextlib.contextmanager
    def _evaluating_at(self, rate):
        """Test steps run at `rate` inside (unchanged when `rate` is None)."""
        previous = self._eval_rate
        self._eval_rate = previous if rate is None else rate
        try:
            yield
        finally:
            self._eval_rate = previous

    def _data_and_rate(self, x, method):
        """`(data inputs, rate)` of inputs that include the rate input.

        A fed rate known on the host (arrays, Python numbers, eager tensors)
        holding one value becomes a Python float: the data then run at that
        width with static shapes, on every backend. Anything else is passed
        on as it is, `(x, None)`, with rates of shape `()` or `(N, 1)` made
        the `(N,)` vectors the layers take (TensorFlow slices by a rate
        tensor in the graph; JAX refuses it, naming the layer). Rates known
        now are validated first, naming `method` and the rate input.
        """
        if not isinstance(x, (list, tuple)) or not self._has_rate(x):
            return x, None
        x = self._with_rate_vectors(x, method)
        flat = keras.tree.flatten(x)
        fed = [t for t, is_rate in zip(flat, self._rate_flags) if is_rate]
        data = [t for t, is_rate in zip(flat, self._rate_flags) if not is_rate]
        owner = f"SlicingModel '{self.name}'.{method}"
        rates = {backend.concrete_rate(t, owner) for t in fed}
        if None in rates or len(rates) != 1:
            return x, None
        return (data[0] if len(data) == 1 else data), rates.pop()

    def _has_rate(self, inputs):
        return len(keras.tree.flatten(inputs)) == len(self._rate_flags)

    def _with_rate(self, inputs, rate):
        """The model inputs with every rate input set to `rate`."""
        data = keras.tree.flatten(inputs)
        if len(data) != self._rate_flags.count(False):
            raise ValueError(
                f"SlicingModel '{self.name}': expected "
                f"{self._rate_flags.count(False)} data input(s), optionally "
                f"with the rate ({len(self._rate_flags)} in all). Received "
                f"{len(data)} input(s)."
            )
        if any(isinstance(t, keras.KerasTensor) for t in data):
            raise ValueError(
                f"SlicingModel '{self.name}': called on symbolic tensors "
                "without a rate. Pass the rate input too: model([x, rate])."
            )
        data = [ops.convert_to_tensor(t) for t in data]
        batch = ops.shape(data[0])[0]
        vector = ops.ones((batch,), "float32") * ops.cast(rate, "float32")
        data = iter(data)
        return [vector if is_rate else next(data) for is_rate in self._rate_flags]

    def _with_rate_vectors(self, inputs, method):
        """Fed rates as the `(N,)` vectors expected, validated when known.

        A rate known now (a number, an array, an eager tensor) must be
        numeric, in (0, 1], one value per batch and of shape `()`, `(N,)`
        or `(N, 1)`; the error names `method`, the rate input and what is
        allowed, before any graph runs. Symbolic rates are left to the
        layers.
        """
        if not isinstance(inputs, (list, tuple)) or not self._has_rate(inputs):
            return inputs
        flat = keras.tree.flatten(inputs)
        vectors = fed_rates.fed_rate_vectors(self, flat, self._rate_flags, method)
        first = next((t for t, r in zip(flat, self._rate_flags) if not r), None)
        # Keras refuses a call mixing tensors and arrays.
        as_tensor = not isinstance(first, np.ndarray)
        return [
            ops.convert_to_tensor(v) if v is not t and as_tensor else v
            for t, v in zip(flat, vectors)
        ]
