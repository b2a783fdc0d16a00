"""slice_model on separable convolutions (Xception, NASNet, mobile nets)."""

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

import keras_slicing
from keras_slicing import layers
from tests.conversion import plain_models


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _images(n=8, seed=0):
    return np.random.default_rng(seed).random((n, 12, 12, 3)).astype("float32")


def test_separable_convolutions_become_sliced_ones_with_outer_sides_kept():
    sliced = keras_slicing.slice_model(plain_models.separable_cnn())
    stem = sliced.get_layer("stem")
    assert isinstance(stem, layers.SlicedSeparableConv2D)
    assert (stem.slice_input, stem.slice_output) == (False, True)
    after_join = sliced.get_layer("after_join")
    assert isinstance(after_join, layers.SlicedSeparableConv2D)
    assert after_join.slice_input and after_join.slice_output
    keras_slicing.check_model(sliced)


@pytest.mark.parametrize("rewire", [None, "l1", "bn", "taylor"])
def test_full_width_matches_the_original(rewire):
    plain = plain_models.separable_cnn()
    x = _images()
    y = np.arange(len(x)) % 5
    sliced = keras_slicing.slice_model(plain, rewire=rewire, data=(x, y))
    want = _numpy(plain(x))
    np.testing.assert_allclose(_numpy(sliced(x)), want, atol=1e-5 * np.abs(want).max())


def _zeroed_after(plain, kept):
    """The original with every output channel of a layer past `kept[name]`
    zeroed (pointwise columns, bias, batch-norm scale and offset)."""
    masked = keras.models.clone_model(plain)
    masked.set_weights(plain.get_weights())
    for name, n in kept.items():
        for variable in masked.get_layer(name).weights:
            if variable.path.endswith(("pointwise_kernel", "/kernel", "bias", "gamma", "beta")):
                value = _numpy(variable).copy()
                value[..., n:] = 0.0
                variable.assign(value)
    return masked


@pytest.mark.parametrize("rate", [0.5, 0.25])
def test_narrow_width_equals_the_original_with_the_dropped_channels_zeroed(rate):
    # Compared before the layer norm, which normalizes a narrow width's
    # active channels only.
    plain = plain_models.separable_1d()
    x = np.random.default_rng(0).random((4, 20, 4)).astype("float32")
    kept = {"sep1": int(16 * rate), "sep2": int(24 * rate)}
    masked = _zeroed_after(plain, kept)
    want = _numpy(keras.Model(masked.inputs, masked.get_layer("sep2").output)(x))
    sliced = keras_slicing.slice_model(plain, rewire=None)
    sub = keras_slicing.extract_submodel(sliced, rate)
    have = _numpy(keras.Model(sub.inputs, sub.get_layer("sep2").output)(x))
    np.testing.assert_allclose(have, want[..., : kept["sep2"]], atol=1e-5)


@pytest.mark.parametrize("rate", [1.0, 0.5, 0.25])
def test_cut_width_is_a_plain_separable_network_equal_to_the_sliced_one(rate):
    # `after_join` reads a concatenation: the cut folds its channel order
    # into both of that layer's kernels.
    x = _images()
    sliced = keras_slicing.slice_model(plain_models.separable_cnn(), data=x)
    sub = keras_slicing.extract_submodel(sliced, rate)
    assert type(sub.get_layer("after_join")) is keras.layers.SeparableConv2D
    np.testing.assert_allclose(
        _numpy(sub(x)), _numpy(sliced.at_rate(rate)(x)), atol=1e-4
    )
    # What model_cost counts is what the cut holds (its batch norms keep
    # their two moving statistics as well).
    assert sub.count_params() == keras_slicing.model_cost(sliced, rate)["params"]


def test_exported_width_computes_what_the_sliced_model_computes(tmp_path):
    x = _images(4)
    sliced = keras_slicing.slice_model(plain_models.separable_cnn(), data=x)
    manifest = keras_slicing.export_tflite(sliced, tmp_path / "bundle", rates=[0.5])
    interpreter = Interpreter(
        model_path=str(tmp_path / "bundle" / manifest["rates"][0]["file"])
    )
    (inp,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(inp["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    (out,) = interpreter.get_output_details()
    np.testing.assert_allclose(
        interpreter.get_tensor(out["index"]), _numpy(sliced.at_rate(0.5)(x)),
        atol=1e-4,
    )
