"""A plain keras.Model refuses a bad fed rate on the host, on every call."""

import copy

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_slicing
from keras_slicing import check_model

L = keras_slicing.layers

_X = np.random.default_rng(0).random((4, 6)).astype("float32")
_Y = np.zeros((4, 2), "float32")
_HALF = np.full(4, 0.5, "float32")

_BAD = {
    "zero": (np.zeros(4), r"must be in \(0, 1\]\. Received: rate=0\.0"),
    "above one": (np.full(4, 1.5), r"must be in \(0, 1\]\. Received: rate=1\.5"),
    "nan": (np.full(4, np.nan), r"must be in \(0, 1\]\. Received: rate=nan"),
    "unequal": (np.array([0.5, 0.5, 1.0, 1.0]), r"must be equal.*\[0\.5, 1\.0\]"),
    "short vector": (np.full(2, 0.5), r"\(N,\) or \(N, 1\), N = 4.*shape \(2,\)"),
    "matrix": (np.full((4, 2), 0.5), r"\(N,\) or \(N, 1\), N = 4.*shape \(4, 2\)"),
}

_ENTRIES = {
    "predict": lambda model, rate: model.predict([_X, rate], verbose=0),
    "evaluate": lambda model, rate: model.evaluate([_X, rate], _Y, verbose=0),
    "fit": lambda model, rate: model.fit([_X, rate], _Y, epochs=1, verbose=0),
    "predict_on_batch": lambda model, rate: model.predict_on_batch([_X, rate]),
    "test_on_batch": lambda model, rate: model.test_on_batch([_X, rate], _Y),
    "train_on_batch": lambda model, rate: model.train_on_batch([_X, rate], _Y),
}


def _plain_model():
    x = keras.Input((6,), name="features")
    rate = keras_slicing.rate_input()
    h = L.SlicedDense(8, slice_input=False)(x, rate)
    model = keras.Model([x, rate], L.SlicedDense(2, slice_output=False)(h, rate),
                        name="plain")
    model.compile(keras.optimizers.SGD(0.1), "mse")
    return model


def _prefix(entry):
    return f"Model 'plain'.{entry}, input 'slice_rate': "


@pytest.mark.parametrize("entry", ["predict", "evaluate", "fit"])
def test_bad_rate_on_the_first_compiled_call_is_a_value_error_naming_the_input(entry):
    model = _plain_model()
    with pytest.raises(ValueError, match=_BAD["above one"][1]) as error:
        _ENTRIES[entry](model, _BAD["above one"][0])
    # A ValueError, not TensorFlow's InvalidArgumentError from a graph run.
    assert str(error.value).startswith(_prefix(entry))
    assert int(model.optimizer.iterations) == 0


@pytest.mark.parametrize("entry", sorted(_ENTRIES))
def test_every_bad_rate_is_refused_after_a_good_call(entry):
    model = _plain_model()
    _ENTRIES[entry](model, _HALF)
    steps = int(model.optimizer.iterations)
    for name, (rate, message) in _BAD.items():
        with pytest.raises(ValueError, match=message) as error:
            _ENTRIES[entry](model, rate)
        assert str(error.value).startswith(_prefix(entry)), name
        assert len(str(error.value)) < 300
    assert int(model.optimizer.iterations) == steps


def test_fit_after_a_refused_first_fit_trains():
    model = _plain_model()
    with pytest.raises(ValueError):
        model.fit([_X, np.zeros(4)], _Y, verbose=0)
    before = [w.copy() for w in model.get_weights()]
    model.fit([_X, _HALF], _Y, epochs=1, verbose=0)
    assert int(model.optimizer.iterations) == 1
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_validation_data_rates_are_checked_before_training():
    model = _plain_model()
    model.predict([_X, _HALF], verbose=0)
    with pytest.raises(ValueError, match=r"'plain'\.fit \(validation_data\), input"):
        model.fit([_X, _HALF], _Y, validation_data=([_X, np.full(4, 2.0)], _Y), verbose=0)
    assert int(model.optimizer.iterations) == 0


def test_model_checked_by_check_model_is_guarded_from_its_first_call():
    model = check_model(_plain_model())
    with pytest.raises(ValueError, match=_prefix("predict")):
        model.predict([_X, np.zeros(4)], verbose=0)
    assert model.predict_function is None


def test_inputs_fed_by_name_are_checked():
    model = check_model(_plain_model())
    with pytest.raises(ValueError, match=_prefix("predict")):
        model.predict({"features": _X, "slice_rate": np.zeros(4)}, verbose=0)


def test_rates_from_a_dataset_are_checked_in_the_graph():
    model = check_model(_plain_model())
    data = tf.data.Dataset.from_tensor_slices(((_X, np.full(4, 1.5, "float32")),)).batch(4)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"must be in \(0, 1\]"):
        model.predict(data, verbose=0)


def test_guard_keeps_results_equal_to_keras_own_predict():
    model = check_model(_plain_model())
    guarded = model.predict([_X, _HALF], verbose=0)
    own = keras.Model.predict(model, [_X, _HALF], verbose=0)
    np.testing.assert_array_equal(guarded, own)


def test_copy_of_a_guarded_model_runs_its_own_weights():
    model = check_model(_plain_model())
    twin = copy.deepcopy(model)
    twin.set_weights([np.zeros_like(w) for w in twin.get_weights()])
    np.testing.assert_array_equal(twin.predict([_X, _HALF], verbose=0), 0.0)
    assert np.any(model.predict([_X, _HALF], verbose=0) != 0.0)


def test_slicing_model_checks_its_rates_itself():
    plain = _plain_model()
    model = keras_slicing.SlicingModel(plain.inputs, plain.outputs, name="sm")
    assert "predict" not in vars(model)
    with pytest.raises(ValueError, match=r"^SlicingModel 'sm'\.predict, input 'slice_rate'"):
        model.predict([_X, np.zeros(4)], verbose=0)
