"""The first training step: traced once, static shapes for "all", progress."""

import keras
import numpy as np
import pytest

import keras_slicing
from keras_slicing.schedulers import RateScheduler
from keras_slicing import SlicingModel
from tests.sliced_models import count_traces
from tests.sliced_models import digits_split
from tests.sliced_models import small_cnn
from tests.sliced_models import small_mlp

RATES = (1.0, 0.75, 0.5, 0.25)
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


class _EveryRateInGraph(RateScheduler):
    """Every rate, but a scheduler the trainer cannot tell runs them all."""

    def num_rates(self, rates):
        return len(rates)

    def sample(self, rates, seed):
        return keras.ops.arange(len(rates), dtype="int32")


def _model(scheduler="all", base=small_mlp):
    keras.utils.set_random_seed(0)
    base = base()
    return SlicingModel(base.inputs, base.outputs, scheduler=scheduler, seed=0)


def _batch(n=16, images=False):
    x, y, _, _ = digits_split()
    x = x[:n] if images else x[:n].reshape(n, 64)
    return x, y[:n]


@pytest.mark.parametrize("scheduler", ["all", "random_min_max"])
def test_first_fit_traces_the_training_step_once(scheduler):
    model = _model(scheduler)
    model.compile("adam", LOSS, metrics=["accuracy"])
    traces = count_traces(model)
    x, y = _batch()
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, calibrate_batchnorm=False)
    assert len(traces) == 1, traces
    # "all" runs one set of rates: one step with static shapes.
    assert model.compiled_rate_sets == ([RATES] if scheduler == "all" else [])


def test_all_schedule_updates_like_the_in_graph_step():
    x, y = _batch(images=True)  # small_cnn: batch norm, every sliced layer
    weights = []
    for scheduler in ("all", _EveryRateInGraph()):
        model = _model(scheduler, base=small_cnn)
        model.compile(keras.optimizers.SGD(0.1), LOSS)
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, calibrate_batchnorm=False)
        weights.append([np.asarray(w) for w in model.get_weights()])
    static, in_graph = weights
    for a, b in zip(static, in_graph):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_fit_from_a_generator_loses_no_batch_to_building():
    model = _model("random_min_max")
    model.compile("adam", LOSS)
    x, y = _batch(32)
    batches = ((x[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8))
    model.fit(batches, steps_per_epoch=4, epochs=1, verbose=0, calibrate_batchnorm=False)
    assert int(model.optimizer.iterations) == 4


def test_verbose_fit_shows_each_width_while_tracing(capsys):
    model = _model("all")
    model.compile("adam", LOSS)
    x, y = _batch()
    model.fit(x, y, batch_size=16, verbose=1, calibrate_batchnorm=False)
    out = capsys.readouterr().out
    for k, rate in enumerate(("1", "0.75", "0.5", "0.25"), start=1):
        assert f"width {k}/4 (rate {rate})" in out, out
    model.fit(x, y, batch_size=16, verbose=1, calibrate_batchnorm=False)
    assert "Tracing" not in capsys.readouterr().out  # traced already


@pytest.mark.parametrize("scheduler", ["all", "random_min_max"])
def test_quiet_fit_shows_no_tracing_progress(capsys, scheduler):
    model = _model(scheduler)
    model.compile("adam", LOSS)
    x, y = _batch()
    model.fit(x, y, batch_size=16, verbose=0, calibrate_batchnorm=False)
    assert "Tracing" not in capsys.readouterr().out


def _residual_bn_cnn():
    """A plain Keras CNN with batch norm and a residual block."""
    x = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(x)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU()(h)
    r = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(h)
    r = keras.layers.BatchNormalization()(r)
    h = keras.layers.ReLU()(keras.layers.Add()([h, r]))
    h = keras.layers.Flatten()(h)
    return keras.Model(x, keras.layers.Dense(10)(h))


def test_converted_residual_batchnorm_model_learns_at_every_width():
    keras.utils.set_random_seed(0)
    model = keras_slicing.slice_model(_residual_bn_cnn(), rates=RATES, seed=0)
    model.compile(keras.optimizers.Adam(1e-2), LOSS)
    x, y = _batch(128, images=True)
    history = model.fit(x, y, batch_size=32, epochs=4, verbose=0).history
    for rate in RATES:
        losses = history[f"loss@{rate:g}"]
        assert losses[-1] < 0.9 * losses[0], (rate, losses)
