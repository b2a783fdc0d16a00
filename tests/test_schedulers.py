"""Rate schedulers: which rates a step runs, and with what frequency."""

import collections

import keras
import numpy as np
import pytest

from keras_slicing import SlicingModel
from keras_slicing import schedulers
from tests.sliced_models import small_mlp

RATES = (1.0, 0.75, 0.5, 0.25)


def _draws(scheduler, count, rates=RATES, seed=0):
    scheduler.validate(rates)
    generator = keras.random.SeedGenerator(seed)
    return [
        keras.ops.convert_to_numpy(scheduler.sample(rates, generator)).tolist()
        for _ in range(count)
    ]


def test_random_min_max_runs_both_ends_and_one_middle_rate():
    draws = _draws(schedulers.get("random_min_max"), 400)
    assert all(len(d) == 3 and d[0] == 0 and d[1] == 3 for d in draws)
    middle = collections.Counter(d[2] for d in draws)
    assert set(middle) == {1, 2}
    assert abs(middle[1] / 400 - 0.5) < 0.1


@pytest.mark.parametrize(
    "name, always",
    [("random_min", 3), ("random_max", 0)],
)
def test_random_min_and_max_always_run_their_end(name, always):
    draws = _draws(schedulers.get(name, num_random=2), 200)
    assert all(len(d) == 3 and d[0] == always and always not in d[1:] for d in draws)
    assert all(len(set(d)) == 3 for d in draws)


def test_random_draws_distinct_rates():
    draws = _draws(schedulers.get("random", num_random=3), 200)
    assert all(len(set(d)) == 3 for d in draws)
    assert set(collections.Counter(i for d in draws for i in d)) == {0, 1, 2, 3}


def test_random_follows_its_probabilities():
    p = np.array([0.6, 0.3, 0.1, 0.0])
    draws = _draws(schedulers.get("random", probabilities=list(p)), 1000)
    counts = np.bincount([d[0] for d in draws], minlength=4) / 1000
    np.testing.assert_allclose(counts, p, atol=0.05)


def test_all_runs_every_rate():
    assert _draws(schedulers.get("all"), 3) == [[0, 1, 2, 3]] * 3


def test_same_seed_gives_same_draws_and_other_seeds_differ():
    scheduler = schedulers.get("random", num_random=2)
    assert _draws(scheduler, 20, seed=1) == _draws(scheduler, 20, seed=1)
    assert _draws(scheduler, 20, seed=1) != _draws(scheduler, 20, seed=2)


def test_custom_scheduler_decides_which_rates_train():
    class NarrowestOnly(schedulers.RateScheduler):
        def num_rates(self, rates):
            return 1

        def sample(self, rates, seed):
            return keras.ops.convert_to_tensor([len(rates) - 1], "int32")

    base = small_mlp()
    model = SlicingModel(base.inputs, base.outputs, scheduler=NarrowestOnly())
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).normal(size=(64, 64)).astype("float32")
    history = model.fit(x, np.arange(64) % 10, batch_size=16, verbose=0).history
    assert history["loss@0.25"][0] > 0
    assert not {f"loss@{r:g}" for r in RATES[:3]} & set(history)  # never run
    # The total is the one rate's loss times its default weight, 3 - 2 * 0.25.
    assert history["loss"][0] == pytest.approx(2.5 * history["loss@0.25"][0])


def test_scheduler_object_survives_serialization():
    scheduler = schedulers.RandomScheduler(
        num_random=2, probabilities=[1, 2, 3, 4], include_max=True
    )
    again = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(scheduler)
    )
    assert isinstance(again, schedulers.RandomScheduler)
    assert again.get_config() == scheduler.get_config()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: schedulers.get("sandwich"), "Unknown rate scheduler"),
        (
            lambda: schedulers.get(schedulers.AllScheduler(), num_random=2),
            "set them on the scheduler",
        ),
        (lambda: schedulers.RandomScheduler(num_random=-1), "non-negative integer"),
        (lambda: schedulers.RandomScheduler(num_random=0), "runs no rate"),
        (lambda: schedulers.RandomScheduler(probabilities=[1, -1]), "non-negative"),
    ],
)
def test_bad_scheduler_arguments_are_rejected(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    "scheduler, message",
    [
        (schedulers.get("random", probabilities=[1.0, 1.0]), "one entry per rate"),
        (
            schedulers.get("random", num_random=2, probabilities=[0, 0, 0, 0]),
            "no rate can be drawn",
        ),
    ],
)
def test_scheduler_that_cannot_serve_the_rates_is_rejected(scheduler, message):
    with pytest.raises(ValueError, match=message):
        scheduler.validate(RATES)


@pytest.mark.parametrize(
    "name, num_random, expected",
    [("random_min_max", 3, 4), ("random", 2, 1), ("random_max", 5, 4), ("all", 3, 4)],
)
def test_num_random_beyond_the_rates_left_runs_them_all(name, num_random, expected):
    scheduler = schedulers.get(
        name, num_random=num_random,
        probabilities=[1, 0, 0, 0] if name == "random" else None,
    )
    scheduler.validate(RATES)
    assert scheduler.num_rates(RATES) == expected
    drawn = keras.ops.convert_to_numpy(scheduler.sample(RATES, keras.random.SeedGenerator(1)))
    assert sorted(drawn.tolist()) == sorted(set(drawn.tolist())) and len(drawn) == expected
