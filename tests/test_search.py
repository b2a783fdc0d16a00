import keras
import numpy as np
import pytest

import keras_slicing
from keras_slicing import search_widths
from tests.sliced_models import randomize_weights
from tests.sliced_models import small_bn_cnn
from tests.sliced_models import small_cnn

L = keras_slicing.layers


def _mlp():
    x = keras.Input((12,), name="features")
    r = keras_slicing.rate_input()
    h = L.SlicedDense(16, activation="relu", slice_input=False, slice_groups=4)(x, r)
    h = L.SlicedDense(16, activation="relu", slice_groups=4)(h, r)
    y = L.SlicedDense(3, slice_output=False)(h, r)
    model = keras.Model([x, r], y, name="mlp")
    randomize_weights(model, seed=3)
    return model


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 12)).astype("float32")
    return x, rng.integers(0, 3, size=64)


def _summary(result):
    return [(p.config, p.cost, p.score) for p in result.points]


@pytest.mark.parametrize("method", ["greedy", "random"])
def test_search_is_deterministic_under_a_seed(method):
    model, data = _mlp(), _data()
    kwargs = {"method": method, "seed": 7, "max_evaluations": 10, "verbose": 0}
    first = search_widths(model, data, **kwargs)
    second = search_widths(model, data, **kwargs)
    assert _summary(first) == _summary(second)


def test_scores_and_costs_are_those_of_the_extracted_models():
    model, (x, y) = _mlp(), _data()
    result = search_widths(model, (x, y), verbose=0)
    for point in result.points[:4]:
        plain = keras_slicing.extract_submodel(model, point.config)
        accuracy = np.mean(plain.predict(x, verbose=0).argmax(-1) == y)
        assert point.score == pytest.approx(accuracy)
        assert point.cost == keras_slicing.model_cost(model, point.config)["macs"]


def test_budget_pick_is_never_below_the_uniform_widths_on_validation():
    model, data = _mlp(), _data()
    result = search_widths(model, data, budgets=[0.2, 0.5, 1.0], verbose=0)
    for budget, point in result.budgets.items():
        fitting = [u.score for u in result.uniform if u.cost_fraction <= budget]
        assert point.cost_fraction <= budget
        assert point.score >= max(fitting)


def test_front_scores_rise_with_cost():
    result = search_widths(_mlp(), _data(), verbose=0)
    costs = [p.cost for p in result.front]
    scores = [p.score for p in result.front]
    assert costs == sorted(costs) and scores == sorted(set(scores))


def test_batch_norm_model_without_calibration_data_is_rejected():
    with pytest.raises(ValueError, match="SlicedBatchNormalization.*calibration_data"):
        search_widths(small_cnn(), (np.zeros((2, 8, 8, 1)), np.zeros(2)), verbose=0)


@pytest.fixture(scope="module")
def bn_search():
    model = small_bn_cnn()
    randomize_weights(model, seed=3)
    rng = np.random.default_rng(0)
    calibration = rng.normal(size=(48, 6, 6, 2)).astype("float32")
    x = rng.normal(size=(32, 6, 6, 2)).astype("float32")
    y = rng.integers(0, 3, size=32)
    result = search_widths(
        model, (x, y), rates=[1.0, 0.5, 0.25], calibration_data=calibration,
        verbose=0,
    )
    return model, calibration, x, y, result


def test_batch_norm_search_front_holds_configs_of_the_searched_rates(bn_search):
    model, _, _, _, result = bn_search
    groups = [g.name for g in keras_slicing.width_groups(model)]
    for point in result.front:
        assert sorted(point.config) == sorted(groups)
        assert set(point.config.values()) <= {1.0, 0.5, 0.25}
    assert any(len(set(p.config.values())) > 1 for p in result.points)


def test_batch_norm_search_scores_are_those_of_the_recalibrated_models(bn_search):
    model, calibration, x, y, result = bn_search
    for point in result.front:
        plain = keras_slicing.extract_submodel(
            model, point.config, calibration_data=calibration
        )
        accuracy = np.mean(plain.predict(x, verbose=0).argmax(-1) == y)
        assert point.score == pytest.approx(accuracy)


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="method must be one of"):
        search_widths(_mlp(), _data(), method="annealing")


def test_litert_latency_cost_gives_milliseconds_of_the_full_width_first():
    result = search_widths(
        _mlp(), _data(), cost=keras_slicing.search.litert_latency(repeats=3),
        max_evaluations=2, verbose=0,
    )
    assert set(result.points[0].config.values()) == {1.0}
    assert all(p.cost > 0 for p in result.points)
    assert result.points[0].cost_fraction == 1.0
    assert not result.complete


def test_litert_latency_prices_mixed_batch_norm_configs_with_calibration_data(bn_search):
    model, calibration, _, _, _ = bn_search
    groups = [g.name for g in keras_slicing.width_groups(model)]
    mixed = {groups[0]: 1.0, groups[1]: 0.5}
    with pytest.raises(ValueError, match="calibration_data"):
        keras_slicing.search.litert_latency(repeats=1)(model, mixed)
    cost = keras_slicing.search.litert_latency(repeats=1, calibration_data=calibration[:16])
    assert cost(model, mixed) > 0
