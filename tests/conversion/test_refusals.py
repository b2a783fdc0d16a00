"""slice_model: wrong arguments and unconvertible models get clear errors."""

import keras
import numpy as np
import pytest

import keras_slicing
from tests.conversion import plain_models

K = keras.layers


def test_unknown_keep_full_name_lists_the_layers():
    with pytest.raises(ValueError, match=r"keep_full.*\['nope'\].*fc1, fc2, out"):
        keras_slicing.slice_model(plain_models.mlp(), keep_full=["nope"])


def test_unknown_rewire_lists_the_allowed_values():
    with pytest.raises(ValueError, match=r"rewire must be one of.*'l1'.*'bn'.*'taylor'.*"
                                         r"Received: rewire='magnitude'"):
        keras_slicing.slice_model(plain_models.mlp(), rewire="magnitude")


def test_taylor_without_data_names_data():
    with pytest.raises(ValueError, match=r"rewire='taylor'.*data=\(x, y\)"):
        keras_slicing.slice_model(plain_models.mlp(), rewire="taylor")


@pytest.mark.parametrize("slice_groups", [0, -2, 2.5, "8", True])
def test_slice_groups_must_be_a_positive_integer(slice_groups):
    with pytest.raises(ValueError, match="slice_groups must be a positive integer"):
        keras_slicing.slice_model(plain_models.mlp(), slice_groups=slice_groups)


def test_subclassed_model_is_refused_naming_its_class():
    class TwoLayers(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = K.Dense(16)
            self.out = K.Dense(2)

        def call(self, x):
            return self.out(self.hidden(x))

    model = TwoLayers()
    model(np.zeros((1, 4), "float32"))
    with pytest.raises(ValueError, match="subclassed TwoLayers"):
        keras_slicing.slice_model(model)


def test_sequential_without_input_shape_is_refused():
    with pytest.raises(ValueError, match="no input shape"):
        keras_slicing.slice_model(keras.Sequential([K.Dense(16), K.Dense(2)]))


def test_a_sliced_model_is_not_sliced_again():
    sliced = keras_slicing.slice_model(plain_models.mlp())
    with pytest.raises(ValueError, match="already"):
        keras_slicing.slice_model(sliced)


def test_a_model_with_nothing_to_slice_is_refused_with_the_reasons():
    model = keras.Sequential([keras.Input((4,)), K.Dense(6), K.Dense(2)])
    with pytest.raises(ValueError, match="nothing.*can be sliced.*not divisible"):
        keras_slicing.slice_model(model)
