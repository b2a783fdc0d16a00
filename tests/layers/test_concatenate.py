import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_slicing
from keras_slicing.layers import SlicedConcatenate
from keras_slicing.rates import active_width

G = 4
WIDTHS = (8, 4, 12)  # three inputs of different widths
RATES = (1.0, 0.75, 0.5, 0.25)


def _inputs_at(rate, widths=WIDTHS, shape=(3, 5)):
    rng = np.random.default_rng(0)
    return [
        rng.normal(size=(2, *shape, active_width(w, rate, G))).astype("float32")
        for w in widths
    ]


def _interleaved(inputs, groups):
    """numpy: group j of the output is group j of every input, in order."""
    parts = [x.reshape(*x.shape[:-1], groups, -1) for x in inputs]
    joined = np.concatenate(parts, axis=-1)
    return joined.reshape(*joined.shape[:-2], -1)


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("widths", [WIDTHS, (8, 16)])
def test_output_is_the_inputs_interleaved_slice_group_by_slice_group(rate, widths):
    inputs = _inputs_at(rate, widths)
    k = round(rate * G)
    have = keras.ops.convert_to_numpy(SlicedConcatenate(slice_groups=G)(inputs, rate))
    np.testing.assert_array_equal(have, _interleaved(inputs, k))


@pytest.mark.parametrize("rate", RATES[1:])
def test_narrow_output_is_the_full_output_of_zeroed_inactive_channels(rate):
    """The paper's semantics: the inactive channels contribute nothing."""
    full = _inputs_at(1.0)
    zeroed = []
    for x, w in zip(full, WIDTHS):
        x = x.copy()
        x[..., active_width(w, rate, G):] = 0.0
        zeroed.append(x)
    narrow = [x[..., : active_width(w, rate, G)] for x, w in zip(full, WIDTHS)]
    layer = SlicedConcatenate(slice_groups=G)
    have = keras.ops.convert_to_numpy(layer(narrow, rate))
    padded = keras.ops.convert_to_numpy(layer(zeroed, 1.0))
    n = have.shape[-1]
    np.testing.assert_array_equal(padded[..., :n], have)
    np.testing.assert_array_equal(padded[..., n:], 0.0)


def test_full_width_holds_the_channels_of_a_plain_concatenate():
    inputs = _inputs_at(1.0)
    have = keras.ops.convert_to_numpy(SlicedConcatenate(slice_groups=G)(inputs))
    plain = keras.ops.convert_to_numpy(keras.layers.Concatenate()(inputs))
    # Output channel p holds channel order[p] of the plain concatenation.
    offsets = np.cumsum((0,) + WIDTHS[:-1])
    order = [o + j * (w // G) + c for j in range(G) for o, w in zip(offsets, WIDTHS)
             for c in range(w // G)]
    np.testing.assert_array_equal(have, plain[..., order])


def test_tensor_rate_in_a_traced_function_matches_the_python_rate():
    layer = SlicedConcatenate(slice_groups=G)
    run = tf.function(lambda inputs, rate: layer(inputs, rate))
    for rate in RATES:
        inputs = _inputs_at(rate)
        np.testing.assert_array_equal(
            run(inputs, tf.fill([2], rate)), layer(inputs, rate), err_msg=f"rate={rate}"
        )


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("height", [3, None])
def test_plain_layer_of_a_width_computes_that_width(rate, height):
    layer = SlicedConcatenate(slice_groups=G)
    inputs = _inputs_at(rate)
    shapes = [(None, height, *x.shape[2:]) for x in inputs]
    plain, weights = layer.plain_layer(rate, shapes, "plain")
    assert weights is None
    reshapes = [] if height else [keras.layers.Reshape] * len(inputs)
    assert [type(inner) for inner in plain.layers[len(inputs):]] == [
        *reshapes, keras.layers.Concatenate, *reshapes[:1]]
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(plain(inputs)),
        keras.ops.convert_to_numpy(layer(inputs, rate)),
    )


def test_config_and_keras_file_round_trip(tmp_path):
    layer = SlicedConcatenate(slice_groups=G, name="join")
    clone = SlicedConcatenate.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    symbolic = [keras.Input((3, 5, w)) for w in WIDTHS]
    rate = keras_slicing.rate_input()
    sliced = [
        keras_slicing.layers.SlicedDense(w, slice_groups=G, slice_input=False)(x, rate)
        for x, w in zip(symbolic, WIDTHS)
    ]
    head = keras_slicing.layers.SlicedDense(2, slice_output=False)
    model = keras.Model([*symbolic, rate], head(layer(sliced, rate), rate))
    model.save(tmp_path / "join.keras")
    restored = keras.saving.load_model(tmp_path / "join.keras")
    assert isinstance(restored.get_layer("join"), SlicedConcatenate)
    for rate in (1.0, 0.25):
        feed = [*_inputs_at(1.0), np.full(2, rate, "float32")]
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(restored(feed)),
            keras.ops.convert_to_numpy(model(feed)),
        )


def test_axis_other_than_the_channels_is_rejected():
    with pytest.raises(ValueError, match=r"axis=-1\. Received: axis=1"):
        SlicedConcatenate(axis=1)


def test_input_not_split_into_the_active_groups_is_rejected():
    inputs = [np.ones((2, 8), "float32"), np.ones((2, 3), "float32")]
    with pytest.raises(ValueError, match=r"input 1 has 3 channels.*slice_groups=4"):
        SlicedConcatenate(slice_groups=G)(inputs, 0.5)
