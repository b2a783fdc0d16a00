"""A converted model fine-tunes to every width with the default recipe."""

import keras
import numpy as np
from sklearn.datasets import load_digits

import keras_slicing

K = keras.layers


def _digits():
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    return x[:1200], digits.target[:1200], x[1200:], digits.target[1200:]


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def test_fine_tuning_improves_the_narrow_widths_and_keeps_the_full_one():
    x, y, x_test, y_test = _digits()
    plain = keras.Sequential([
        keras.Input((64,)),
        K.Dense(64, activation="relu", name="fc1"),
        K.Dense(64, activation="relu", name="fc2"),
        K.Dense(10, name="logits"),
    ])
    plain.compile(keras.optimizers.Adam(3e-3), _loss(), metrics=["accuracy"])
    plain.fit(x, y, epochs=8, batch_size=64, verbose=0)
    full = plain.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"]

    sliced = keras_slicing.slice_model(plain, rates=(1.0, 0.5, 0.25), seed=0)
    sliced.compile(keras.optimizers.Adam(1e-3), _loss(), metrics=["accuracy"])
    before = sliced.evaluate_rates(x_test, y_test)
    assert before[1.0]["accuracy"] == full
    sliced.fit(x, y, epochs=4, batch_size=64, verbose=0)
    after = sliced.evaluate_rates(x_test, y_test)
    assert after[0.25]["accuracy"] > before[0.25]["accuracy"] + 0.1
    assert after[0.5]["accuracy"] > before[0.5]["accuracy"]
    assert after[1.0]["accuracy"] > full - 0.05
