import math

import keras
import numpy as np
import pytest

import keras_slicing
from keras_slicing import step_scales
from tests import step_scale_reference as reference

L = keras_slicing.layers
RATES = (1.0, 0.75, 0.5, 0.25)
GROUPS = 4


def _group_rate(index, size, groups=GROUPS, rates=RATES):
    """The narrowest rate whose active groups hold position `index` of `size`."""
    group = index // (size // groups)
    return min(r for r in rates if group < math.ceil(r * groups))


def _rates_along(size, groups=GROUPS):
    return np.array([_group_rate(i, size, groups) for i in range(size)])


def _narrowest(model):
    return {v.path: rates for v, rates in
            zip(model.trainable_weights, step_scales.narrowest_rates(model))}


def _model(x, r, y):
    return keras_slicing.SlicingModel([x, r], y, rates=RATES)


def test_dense_kernels_take_the_rate_of_their_sliced_axes():
    x = keras.Input((5,))
    r = keras_slicing.rate_input()
    h = L.SlicedDense(8, slice_input=False, slice_groups=GROUPS, name="a")(x, r)
    h = L.SlicedDense(12, slice_groups=GROUPS, name="b")(h, r)
    y = L.SlicedDense(3, slice_output=False, slice_groups=GROUPS, name="c")(h, r)
    got = _narrowest(_model(x, r, y))
    rows, cols = _rates_along(8), _rates_along(12)
    np.testing.assert_array_equal(got["a/kernel"], np.tile(rows, (5, 1)))
    np.testing.assert_array_equal(got["b/kernel"], np.maximum(rows[:, None], cols))
    np.testing.assert_array_equal(got["b/bias"], cols)
    np.testing.assert_array_equal(got["c/kernel"], np.tile(cols[:, None], (1, 3)))
    np.testing.assert_array_equal(got["c/bias"], np.full(3, 0.25))


def test_conv_kernel_takes_the_wider_of_its_input_and_output_rates():
    x = keras.Input((6, 6, 2))
    r = keras_slicing.rate_input()
    h = L.SlicedConv2D(8, 3, slice_input=False, slice_groups=GROUPS, name="stem")(x, r)
    h = L.SlicedConv2D(4, 3, slice_groups=GROUPS, name="conv")(h, r)
    h = keras.layers.GlobalAveragePooling2D()(h)
    y = L.SlicedDense(2, slice_output=False, slice_groups=GROUPS)(h, r)
    got = _narrowest(_model(x, r, y))["conv/kernel"]
    want = np.maximum(_rates_along(8)[:, None], _rates_along(4)[None, :])
    np.testing.assert_array_equal(got, np.broadcast_to(want, (3, 3, 8, 4)))


def test_concatenation_reader_rows_follow_the_interleaved_groups():
    x = keras.Input((5,))
    r = keras_slicing.rate_input()
    a = L.SlicedDense(8, slice_input=False, slice_groups=GROUPS)(x, r)
    b = L.SlicedDense(4, slice_input=False, slice_groups=GROUPS)(x, r)
    h = L.SlicedConcatenate(slice_groups=GROUPS)([a, b], r)
    y = L.SlicedDense(2, slice_output=False, slice_groups=GROUPS, name="reader")(h, r)
    got = _narrowest(_model(x, r, y))["reader/kernel"]
    # Output group g holds group g of `a` (2 channels), then of `b` (1).
    rows = np.array([_group_rate(p, 12) for p in range(12)])
    np.testing.assert_array_equal(got, np.tile(rows[:, None], (1, 2)))


def test_lstm_gates_take_the_rate_of_their_unit():
    x = keras.Input((3, 4))
    r = keras_slicing.rate_input()
    h = L.SlicedLSTM(8, slice_input=False, slice_groups=GROUPS, name="lstm")(x, r)
    y = L.SlicedDense(2, slice_output=False, slice_groups=GROUPS)(h, r)
    got = _narrowest(_model(x, r, y))
    units = np.tile(_rates_along(8), 4)  # gate blocks i, f, c, o
    np.testing.assert_array_equal(got["lstm/lstm_cell/kernel"], np.tile(units, (4, 1)))
    np.testing.assert_array_equal(
        got["lstm/lstm_cell/recurrent_kernel"],
        np.maximum(_rates_along(8)[:, None], units[None, :]),
    )
    np.testing.assert_array_equal(got["lstm/lstm_cell/bias"], units)


def test_attention_projections_take_the_rate_of_their_head():
    x = keras.Input((3, 8))
    r = keras_slicing.rate_input()
    h = L.SlicedMultiHeadAttention(4, 2, slice_input=False, output_shape=8,
                                   name="mha")(x, x, rate=r)
    h = keras.layers.GlobalAveragePooling1D()(h)
    y = L.SlicedDense(2, slice_output=False, slice_groups=GROUPS)(h, r)
    got = _narrowest(_model(x, r, y))
    heads = _rates_along(4)
    np.testing.assert_array_equal(
        got["mha/query/kernel"], np.broadcast_to(heads[None, :, None], (8, 4, 2)))
    np.testing.assert_array_equal(
        got["mha/attention_output/kernel"],
        np.broadcast_to(heads[:, None, None], (4, 2, 8)))


def test_weights_are_restored_after_reading_the_widths():
    model = reference.linear_model()
    before = [w.copy() for w in model.get_weights()]
    step_scales.narrowest_rates(model)
    for got, want in zip(model.get_weights(), before):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("optimizer, reference_step", [
    (lambda: keras.optimizers.SGD(0.1), lambda w: reference.sgd_step(
        w, *reference.batch(), 0.1)),
    (lambda: keras.optimizers.Adam(0.01), lambda w: reference.first_adam_step(
        w, *reference.batch(), 0.01)),
], ids=["sgd", "adam"])
def test_step_is_scaled_per_element(optimizer, reference_step):
    model = reference.linear_model()
    before, after = reference.trained_one_step(model, optimizer())
    for got, want in zip(after, reference_step(before)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scales", [(1.0,), (1.0, -0.5), "fast", (1.0, float("nan"))])
def test_bad_scales_are_refused_naming_the_argument(scales):
    model = reference.linear_model()
    with pytest.raises(ValueError, match="rate_step_scales"):
        model._set_rate_step_scales(scales)
