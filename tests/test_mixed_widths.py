"""MixedWidthScheduler: training mixed width configurations."""

import keras
import numpy as np
import pytest

from keras_slicing import MixedWidthScheduler
from keras_slicing import SlicingModel
from keras_slicing import WidthConfig
from keras_slicing import layers
from keras_slicing import rate_input
from keras_slicing import width_groups
from tests.sliced_models import small_cnn
from tests.sliced_models import small_mlp

RATES = (1.0, 0.75, 0.5, 0.25)


def _model(scheduler, seed=0, rates=RATES):
    mlp = small_mlp(features=8, classes=3)
    return SlicingModel(mlp.inputs, mlp.outputs, rates=rates, scheduler=scheduler,
                        seed=seed)


def _cross_entropy(logits, y):
    logits = logits - logits.max(-1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return float(-np.mean(log_p[np.arange(len(y)), y]))


def test_pool_holds_distinct_mixed_configurations_of_the_groups():
    model = _model(MixedWidthScheduler(pool_size=5))
    names = [g.name for g in width_groups(model)]
    pool = model.scheduler.configurations(model)
    assert len(pool) == 5
    assert len({tuple(c.values()) for c in pool}) == 5
    for config in pool:
        assert list(config) == names
        assert set(config.values()) <= set(RATES)
        assert len(set(config.values())) > 1


def test_pool_takes_every_mixed_configuration_when_they_fit():
    model = _model(MixedWidthScheduler(pool_size=16), rates=(1.0, 0.5))
    pool = model.scheduler.configurations(model)
    assert sorted(tuple(c.values()) for c in pool) == [(0.5, 1.0), (1.0, 0.5)]


def test_pool_is_deterministic_under_its_seed():
    def pool(seed):
        model = _model(MixedWidthScheduler(pool_size=4, seed=seed))
        return [list(c.values()) for c in model.scheduler.configurations(model)]

    assert pool(3) == pool(3)
    assert pool(3) != pool(4)


def test_steps_run_sandwich_and_pool_entries_and_vary_every_group():
    model = _model(MixedWidthScheduler(pool_size=6), seed=1)
    count = len(RATES)
    seen = {g.name: set() for g in width_groups(model)}
    for _ in range(60):
        indices = model._host_indices()
        assert indices[:2] == (0, count - 1)
        assert len(indices) == 3 and count <= indices[2] < count + 6
        config = model._step_configs[indices[2] - count][0]
        for name, rate in config.rates.items():
            seen[name].add(rate)
    assert all(len(rates) > 1 for rates in seen.values())


def test_step_draws_repeat_under_the_model_seed():
    def draws(seed):
        model = _model(MixedWidthScheduler(pool_size=6), seed=seed)
        return [model._host_indices() for _ in range(20)]

    assert draws(5) == draws(5)
    assert draws(5) != draws(6)


def test_training_lowers_the_loss_of_a_pooled_configuration():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0).astype("int32")
    model = _model(MixedWidthScheduler(pool_size=2))
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    config = model.scheduler.configurations(model)[0]
    before = _cross_entropy(keras.ops.convert_to_numpy(model.at_rate(config)(x)), y)
    model.fit(x, y, batch_size=32, epochs=8, verbose=0)
    after = _cross_entropy(keras.ops.convert_to_numpy(model.at_rate(config)(x)), y)
    assert after < 0.8 * before
    ran = {entry for rates in model.compiled_rate_sets for entry in rates}
    assert WidthConfig(config) in ran


def test_configuration_below_min_rate_runs_the_narrowest_allowed_rate():
    model = _model(MixedWidthScheduler(pool_size=4), rates=(1.0, 0.5))
    model.min_rate = 1.0
    assert {model._host_indices() for _ in range(10)} == {(0,)}


def test_scheduler_round_trips_through_a_keras_file(tmp_path):
    model = _model(MixedWidthScheduler(num_configs=2, pool_size=5, seed=7))
    path = str(tmp_path / "mixed.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.scheduler, MixedWidthScheduler)
    assert loaded.scheduler.get_config() == model.scheduler.get_config()
    assert [c for c, _, _ in loaded._step_configs] == [c for c, _, _ in model._step_configs]


def test_batch_norm_model_is_refused_naming_the_scheduler():
    cnn = small_cnn()
    with pytest.raises(ValueError, match=r"scheduler=MixedWidthScheduler.*SlicedBatchNormalization"):
        SlicingModel(cnn.inputs, cnn.outputs, scheduler=MixedWidthScheduler())


def test_single_group_model_is_refused():
    x = keras.Input((4,))
    r = rate_input()
    h = layers.SlicedDense(8, slice_input=False)(x, r)
    y = layers.SlicedDense(2, slice_output=False)(h, r)
    with pytest.raises(ValueError, match="at least two width groups"):
        SlicingModel([x, r], y, scheduler=MixedWidthScheduler())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_configs": 0}, "num_configs must be an integer >= 1"),
        ({"pool_size": 2.5}, "pool_size must be an integer"),
        ({"num_configs": 3, "pool_size": 2}, "num_configs must be at most pool_size"),
        ({"seed": None}, "seed must be an integer"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MixedWidthScheduler(**kwargs)
