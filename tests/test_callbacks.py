"""Callbacks: per-rate validation, rate bounds, and Keras' own callbacks."""

import csv
import warnings

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

from keras_slicing import SlicingModel
from keras_slicing.callbacks import MinRateScheduler
from keras_slicing.callbacks import SlicedValidation
from keras_slicing.callbacks import shrinking_schedule
from tests.sliced_models import small_mlp

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
RATES = (1.0, 0.75, 0.5, 0.25)


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return (data.data / 16.0).astype("float32"), data.target.astype("int32")


def _model(**kwargs):
    base = small_mlp()
    model = SlicingModel(base.inputs, base.outputs, seed=0, **kwargs)
    model.compile(keras.optimizers.Adam(3e-3), LOSS, metrics=["accuracy"])
    return model


def _accuracy(model, x, y, rate):
    logits = model([x, np.full(len(x), rate, "float32")])
    return np.mean(keras.ops.convert_to_numpy(logits).argmax(1) == y)


def test_sliced_validation_reaches_history_and_csv_logger(digits, tmp_path):
    x, y = digits
    model = _model()
    log = tmp_path / "log.csv"
    history = model.fit(
        x[:256], y[:256], batch_size=64, epochs=2, verbose=0,
        callbacks=[
            SlicedValidation((x[1500:], y[1500:])),
            keras.callbacks.CSVLogger(log),
        ],
    )
    keys = {f"val_{m}@{r:g}" for r in RATES for m in ("loss", "accuracy")}
    assert keys <= set(history.history)
    for rate in RATES:
        assert history.history[f"val_accuracy@{rate:g}"][-1] == pytest.approx(
            _accuracy(model, x[1500:], y[1500:], rate)
        )
    with open(log) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and keys <= set(rows[0])


def test_early_stopping_and_checkpoint_monitor_a_rate_metric(digits, tmp_path):
    x, y = digits
    model = _model()
    path = tmp_path / "best.keras"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(
            x[:256], y[:256], batch_size=64, epochs=30, verbose=0,
            callbacks=[
                SlicedValidation((x[1500:], y[1500:]), rates=[0.25]),
                keras.callbacks.EarlyStopping(
                    monitor="val_loss@0.25", mode="min", patience=0, min_delta=10.0
                ),
                keras.callbacks.ModelCheckpoint(
                    path, monitor="val_accuracy@0.25", mode="max", save_best_only=True
                ),
            ],
        )
    assert not [w for w in caught if "@0.25" in str(w.message)]  # monitors found
    assert len(history.history["loss"]) == 2  # stopped: no 10.0 improvement
    assert path.exists()
    assert "val_accuracy@1" not in history.history


def test_min_rate_scheduler_admits_narrower_rates_epoch_by_epoch(digits):
    x, y = digits
    model = _model(rates=(1.0, 0.5, 0.25))
    history = model.fit(
        x[:128], y[:128], batch_size=32, epochs=3, verbose=0,
        callbacks=[MinRateScheduler(shrinking_schedule(model.rates, 1))],
    ).history
    assert history["min_rate"] == [1.0, 0.5, 0.25]
    # A rate appears from the first epoch that runs it, as Keras' val_*
    # entries appear only in epochs with validation.
    assert len(history["loss@1"]) == 3
    assert len(history["loss@0.5"]) == 2 and len(history["loss@0.25"]) == 1
    assert all(v > 0 for key in ("loss@1", "loss@0.5", "loss@0.25") for v in history[key])


def test_callbacks_skip_the_epochs_before_a_rate_runs(digits, tmp_path):
    x, y = digits
    model = _model(rates=(1.0, 0.25))
    stopper = keras.callbacks.EarlyStopping(monitor="loss@0.25", mode="min", patience=1)
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(tmp_path / "best.keras"), monitor="loss@0.25", mode="min",
        save_best_only=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "loss@0.25 is not available" at first
        history = model.fit(
            x[:128], y[:128], batch_size=32, epochs=4, verbose=0,
            callbacks=[
                MinRateScheduler(shrinking_schedule(model.rates, 2)),
                stopper,
                checkpoint,
            ],
        )
    # Epochs 0-1 do not run 0.25: they neither count against the patience
    # nor set a "perfect" best of 0.
    assert len(history.epoch) >= 3
    assert checkpoint.best == pytest.approx(min(history.history["loss@0.25"]))
    assert checkpoint.best > 0


def test_shrinking_schedule_steps_through_rates_widest_first():
    schedule = shrinking_schedule([0.25, 1.0, 0.5], epochs_per_rate=2)
    assert [schedule(e) for e in range(7)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.25]


def test_backup_and_restore_resumes_an_interrupted_fit(digits, tmp_path):
    x, y = digits
    x, y = x[:128], y[:128]

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("killed")

    backup = str(tmp_path / "backup")
    first = _model()
    initial = first.get_weights()
    with pytest.raises(RuntimeError, match="killed"):
        first.fit(x, y, batch_size=32, epochs=4, shuffle=False, verbose=0,
                  callbacks=[keras.callbacks.BackupAndRestore(backup), Interrupt()])
    resumed = _model()
    history = resumed.fit(x, y, batch_size=32, epochs=4, shuffle=False, verbose=0,
                          callbacks=[keras.callbacks.BackupAndRestore(backup)])
    assert len(history.history["loss"]) == 2  # epochs 3 and 4 only

    straight = _model()
    straight.set_weights(initial)
    straight.fit(x, y, batch_size=32, epochs=4, shuffle=False, verbose=0)
    for a, b in zip(resumed.get_weights(), straight.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_callbacks_need_a_slicing_model():
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    for callback in (SlicedValidation((np.ones((2, 4)), np.ones(2))),
                     MinRateScheduler(lambda epoch: 1.0)):
        with pytest.raises(ValueError, match="needs a keras_slicing.SlicingModel"):
            callback.set_model(plain)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: SlicedValidation((1, 2, 3, 4)), "must be \\(x, y\\)"),
        (lambda: SlicedValidation(np.zeros((4, 64))), "needs labels.*shape \\(4, 64\\)"),
        (lambda: SlicedValidation((1, 2), freq=0), "freq must be a positive"),
        (lambda: SlicedValidation((1, 2), rates=[2.0]), "in \\(0, 1\\]"),
        (lambda: MinRateScheduler(0.5), "schedule must be a function"),
        (lambda: shrinking_schedule([1.0], 0), "epochs_per_rate must be"),
    ],
)
def test_bad_callback_arguments_are_rejected(make, message):
    with pytest.raises(ValueError, match=message):
        make()
