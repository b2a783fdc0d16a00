"""Callbacks for training a `SlicingModel`.

- `SlicedValidation`: validates every rate at each epoch end and adds
  `val_<name>@<rate>` to the logs.
- `MinRateScheduler`: lowers (or raises) the model's `min_rate` from epoch
  to epoch, e.g. progressive shrinking (`shrinking_schedule`).
"""

import keras

from keras_slicing import rates as rates_lib


__all__ = [
    "MinRateScheduler",
    "SlicedValidation",
    "shrinking_schedule",
]


def _check_positive_int(value, owner, name):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"{owner}: {name} must be a positive integer. "
            f"Received: {name}={value!r}"
        )


def _require_slicing_model(callback, model):
    if not hasattr(model, "evaluate_rates") or not hasattr(model, "min_rate"):
        raise ValueError(
            f"{type(callback).__name__} needs a keras_slicing.SlicingModel. "
            f"Received a model of type {type(model).__name__}"
        )


class SlicedValidation(keras.callbacks.Callback):
    """Validates every slice rate at the end of each epoch.

    Runs `model.evaluate_rates` on `validation_data` and adds one entry per
    rate and metric, `val_<name>@<rate>` (e.g. `val_accuracy@0.25`), to the
    epoch logs. Callbacks listed after it in `fit(callbacks=[...])` see
    these entries, and so do `History`, the progress bar, `CSVLogger`,
    `TensorBoard`, `EarlyStopping(monitor="val_loss@0.25")` and
    `ModelCheckpoint(monitor=...)`: list it first.

    Args:
        validation_data: `(x, y)` or `(x, y, sample_weight)` with the data
            inputs only, or a dataset yielding such tuples. Labels are
            required (the loss is evaluated); inputs alone are refused.
        rates: Rates to validate. Defaults to the model's `rates`.
        batch_size: Batch size for array data. Defaults to Keras' default.
        freq: Validate every `freq` epochs. Defaults to 1.

    Example:

    ```python
    model.fit(x, y, epochs=5, callbacks=[
        SlicedValidation((x_val, y_val)),
        keras.callbacks.EarlyStopping(monitor="val_accuracy@0.25",
                                      mode="max", patience=2),
    ])
    ```

    Reference:
    - [Cai et al., 2020](https://arxiv.org/abs/1904.01831), Model Slicing.
    """

    def __init__(self, validation_data, rates=None, batch_size=None, freq=1):
        super().__init__()
        if isinstance(validation_data, (tuple, list)):
            if len(validation_data) not in (2, 3):
                raise ValueError(
                    "SlicedValidation: validation_data must be (x, y), "
                    "(x, y, sample_weight) or a dataset. Received a tuple of "
                    f"length {len(validation_data)}"
                )
            x, y, *weights = validation_data
            self._data = {
                "x": x,
                "y": y,
                "sample_weight": weights[0] if weights else None,
                "batch_size": batch_size,
            }
        elif hasattr(validation_data, "shape") or isinstance(validation_data, dict):
            raise ValueError(
                "SlicedValidation: validation_data needs labels to compute "
                "the loss: pass (x, y) or (x, y, sample_weight), or a dataset "
                "yielding such tuples. Received inputs alone"
                + (
                    f" of shape {tuple(validation_data.shape)}"
                    if hasattr(validation_data, "shape") else ""
                )
            )
        else:
            spec = getattr(validation_data, "element_spec", None)
            if spec is not None and not (
                isinstance(spec, tuple) and len(spec) in (2, 3)
            ):
                raise ValueError(
                    "SlicedValidation: the validation dataset must yield "
                    "(x, y) or (x, y, sample_weight) tuples: the loss needs "
                    f"labels. Received a dataset of {spec}"
                )
            if batch_size is not None:
                raise ValueError(
                    "SlicedValidation: batch_size applies to array data only; "
                    f"a dataset is already batched. Received: batch_size={batch_size}"
                )
            self._data = {"x": validation_data}
        if rates is not None:
            rates = rates_lib.validate_rates(rates, "SlicedValidation: rates")
        _check_positive_int(freq, "SlicedValidation", "freq")
        self.rates = rates
        self.freq = freq

    def set_model(self, model):
        _require_slicing_model(self, model)
        super().set_model(model)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.freq or logs is None:
            return
        results = self.model.evaluate_rates(rates=self.rates, **self._data)
        for rate, values in results.items():
            suffix = "@" + rates_lib.format_rate(rate)
            for name, value in values.items():
                logs[f"val_{name}{suffix}"] = value


class MinRateScheduler(keras.callbacks.Callback):
    """Sets the model's `min_rate` at the start of every epoch.

    Training steps replace rates below `min_rate` by the narrowest allowed
    rate, so a schedule that lowers it trains the wide widths first and adds
    the narrow ones later (progressive shrinking, as in Once-for-All); the
    value is read inside the compiled step, so changing it does not retrace.
    The value of each epoch is logged as `min_rate`.

    Args:
        schedule: A function `epoch -> min_rate` (epochs count from 0); 0
            means no bound. See `shrinking_schedule`.
        verbose: Whether to print the value when it changes.

    Example:

    ```python
    schedule = shrinking_schedule(model.rates, epochs_per_rate=2)
    model.fit(x, y, epochs=8, callbacks=[MinRateScheduler(schedule)])
    # epochs 0-1 train rate 1.0 only, 2-3 add 0.75, ... from epoch 6 all.
    ```

    Reference:
    - [Cai et al., 2020](https://arxiv.org/abs/1904.01831), Model Slicing.
    - [Cai et al., 2020](https://arxiv.org/abs/1908.09791), Once-for-All
      (progressive shrinking).
    """

    def __init__(self, schedule, verbose=0):
        super().__init__()
        if not callable(schedule):
            raise ValueError(
                "MinRateScheduler: schedule must be a function epoch -> "
                f"min_rate. Received: schedule={schedule!r}"
            )
        self.schedule = schedule
        self.verbose = verbose

    def set_model(self, model):
        _require_slicing_model(self, model)
        super().set_model(model)

    def on_epoch_begin(self, epoch, logs=None):
        previous = self.model.min_rate
        self.model.min_rate = float(self.schedule(epoch))
        if self.verbose and self.model.min_rate != previous:
            print(
                f"\nEpoch {epoch + 1}: MinRateScheduler set min_rate to "
                f"{self.model.min_rate:g}."
            )

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["min_rate"] = self.model.min_rate


def shrinking_schedule(rates, epochs_per_rate):
    """A progressive-shrinking schedule for `MinRateScheduler`.

    Starts with the widest of `rates` only and admits the next narrower rate
    every `epochs_per_rate` epochs.

    Args:
        rates: The model's rates (any order).
        epochs_per_rate: Positive number of epochs per stage.

    Returns:
        A function `epoch -> min_rate`.
    """
    ordered = sorted(
        rates_lib.validate_rates(rates, "shrinking_schedule"), reverse=True
    )
    _check_positive_int(epochs_per_rate, "shrinking_schedule", "epochs_per_rate")

    def schedule(epoch):
        return ordered[min(epoch // epochs_per_rate, len(ordered) - 1)]

    return schedule
