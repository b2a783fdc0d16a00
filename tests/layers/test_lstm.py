import keras
import numpy as np
import pytest

import keras_slicing
from keras_slicing.layers import SlicedLSTM
from tests.layers import harness

UNITS, FEATURES, GATES = 16, 8, 4
RATES = [(1.0, 16, 8), (0.75, 12, 6), (0.5, 8, 4), (0.25, 4, 2)]  # rate, units, inputs
X = np.random.default_rng(0).normal(size=(3, 6, FEATURES)).astype("float32")


def _layer(**kwargs):
    layer = SlicedLSTM(
        UNITS, slice_groups=4, bias_initializer="random_normal", **kwargs
    )
    layer.build((None, 6, FEATURES))
    return layer


def _inputs_at(rate):
    return (X[..., : int(FEATURES * rate)],)


# A width takes the first units of every gate block: not a leading block.
CASE = harness.LayerCase(
    lambda: _layer(return_sequences=True), _inputs_at, keras.layers.LSTM,
    leading_blocks=False,
)


@pytest.mark.parametrize("check", harness.CHECKS, ids=harness.check_id)
def test_sliced_layer_contract(check, tmp_path):
    check(CASE, tmp_path)


def _gates(array, rows, n):
    """Numpy: the first `rows` rows and first `n` units of every gate block."""
    blocks = array.reshape(*array.shape[:-1], GATES, UNITS)[..., :n]
    return blocks[:rows].reshape(-1, GATES * n) if array.ndim == 2 else blocks.reshape(-1)


def _plain_narrow(layer, n, n_in, **kwargs):
    kernel, recurrent, bias = layer.get_weights()
    plain = keras.layers.LSTM(n, **kwargs)
    plain.build((None, 6, n_in))
    plain.set_weights([_gates(kernel, n_in, n), _gates(recurrent, n, n), _gates(bias, None, n)])
    return plain


@pytest.mark.parametrize("rate, n, n_in", RATES[1:])
def test_narrow_width_is_full_lstm_with_inactive_units_held_at_zero(rate, n, n_in):
    layer = _layer(return_sequences=True)
    kernel, recurrent, bias = layer.get_weights()
    # A zero cell candidate keeps an inactive unit's cell, hence its output,
    # at zero at every step; zero input features stand for inactive inputs.
    for weight in (kernel, recurrent, bias):
        weight[..., 2 * UNITS + n: 3 * UNITS] = 0.0
    full = keras.layers.LSTM(UNITS, return_sequences=True)
    full.build((None, 6, FEATURES))
    full.set_weights([kernel, recurrent, bias])
    x = np.where(np.arange(FEATURES) < n_in, X, 0.0).astype("float32")
    want = keras.ops.convert_to_numpy(full(x))
    np.testing.assert_array_equal(want[..., n:], 0.0)
    np.testing.assert_allclose(layer(X[..., :n_in], rate), want[..., :n], atol=1e-5)


def test_states_have_the_active_width_and_resume_the_sequence():
    layer = _layer(return_sequences=True, return_state=True)
    plain = _plain_narrow(layer, 8, 4, return_sequences=True, return_state=True)
    x = X[..., :4]
    output, h, c = layer(x, 0.5)
    assert h.shape == c.shape == (3, 8)
    for got, want in zip((output, h, c), plain(x)):
        np.testing.assert_allclose(got, want, atol=1e-5)
    # The second half of the sequence from the state equals the whole run.
    _, h1, c1 = layer(x[:, :3], 0.5)
    rest, _, _ = layer(x[:, 3:], 0.5, initial_state=[h1, c1])
    np.testing.assert_allclose(rest, output[:, 3:], atol=1e-5)


def test_go_backwards_matches_plain_lstm():
    layer = _layer(go_backwards=True, return_sequences=True)
    plain = _plain_narrow(layer, 8, 4, go_backwards=True, return_sequences=True)
    np.testing.assert_allclose(layer(X[..., :4], 0.5), plain(X[..., :4]), atol=1e-5)


def _model():
    x = keras.Input((6, FEATURES))
    rate = keras_slicing.rate_input()
    h = SlicedLSTM(UNITS, slice_groups=4, slice_input=False, return_sequences=True)(x, rate)
    h = SlicedLSTM(UNITS, slice_groups=4)(h, rate)
    y = keras_slicing.layers.SlicedDense(3, slice_output=False)(h, rate)
    return keras.Model([x, rate], y)


def test_extracted_width_is_plain_lstms_and_costs_its_units():
    model = _model()
    half = keras_slicing.extract_submodel(model, 0.5)
    lstms = [layer for layer in half.layers if isinstance(layer, keras.layers.LSTM)]
    assert [type(layer) for layer in lstms] == [keras.layers.LSTM] * 2
    assert [layer.units for layer in lstms] == [8, 8]
    np.testing.assert_allclose(half(X), model([X, np.full(3, 0.5, "float32")]), atol=1e-5)
    n = 8
    first, second = 4 * n * (FEATURES + n) + 4 * n, 4 * n * (n + n) + 4 * n
    params = first + second + n * 3 + 3
    macs = 6 * (4 * n * (FEATURES + n) + 4 * n * (n + n)) + n * 3
    assert keras_slicing.model_cost(model, 0.5) == {"params": params, "macs": macs}
    assert half.count_params() == params


def test_dropout_is_rejected():
    with pytest.raises(ValueError, match="recurrent_dropout"):
        SlicedLSTM(16, recurrent_dropout=0.1)


def test_stateful_is_rejected():
    with pytest.raises(ValueError, match="stateful=True"):
        SlicedLSTM(16, stateful=True)


def test_units_not_divisible_are_rejected():
    with pytest.raises(ValueError, match=r"units=12 is not divisible by slice_groups=8"):
        SlicedLSTM(12)


def test_masked_input_is_rejected():
    ids = keras.Input((6,), dtype="int32")
    h = keras.layers.Embedding(10, 8, mask_zero=True)(ids)
    with pytest.raises(ValueError, match="masked time steps"):
        SlicedLSTM(16, slice_input=False)(h, 0.5)
