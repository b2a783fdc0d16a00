import keras
import numpy as np
import pytest

import keras_slicing
from keras_slicing.layers import SlicedGRU
from tests.layers import harness

UNITS, FEATURES, GATES = 16, 8, 3
RATES = [(1.0, 16, 8), (0.75, 12, 6), (0.5, 8, 4), (0.25, 4, 2)]  # rate, units, inputs
X = np.random.default_rng(0).normal(size=(3, 6, FEATURES)).astype("float32")


def _layer(**kwargs):
    layer = SlicedGRU(UNITS, slice_groups=4, bias_initializer="random_normal", **kwargs)
    layer.build((None, 6, FEATURES))
    return layer


def _inputs_at(rate):
    return (X[..., : int(FEATURES * rate)],)


# A width takes the first units of every gate block: not a leading block.
CASES = {
    f"reset_after_{flag}": harness.LayerCase(
        lambda flag=flag: _layer(return_sequences=True, reset_after=flag),
        _inputs_at, keras.layers.GRU, leading_blocks=False,
    )
    for flag in (True, False)
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("check", harness.CHECKS, ids=harness.check_id)
def test_sliced_layer_contract(check, case, tmp_path):
    check(CASES[case], tmp_path)


def _gates(array, rows, n):
    """Numpy: the first `rows` rows and first `n` units of every gate block."""
    blocks = array.reshape(*array.shape[:-1], GATES, UNITS)[..., :n]
    return blocks[:rows].reshape(len(blocks[:rows]), GATES * n)


def _plain_narrow(layer, n, n_in, **kwargs):
    kernel, recurrent, bias = layer.get_weights()
    plain = keras.layers.GRU(n, **kwargs)
    plain.build((None, 6, n_in))
    bias = _gates(np.atleast_2d(bias), None, n).reshape(plain.get_weights()[2].shape)
    plain.set_weights([_gates(kernel, n_in, n), _gates(recurrent, n, n), bias])
    return plain


@pytest.mark.parametrize("rate, n, n_in", RATES[1:])
def test_narrow_width_is_full_gru_with_inactive_units_held_at_zero(rate, n, n_in):
    layer = _layer(return_sequences=True)
    kernel, recurrent, bias = layer.get_weights()
    # A zero candidate keeps an inactive unit's state at zero at every step
    # (h = z * 0 + (1 - z) * tanh(0)); zero features stand for inactive inputs.
    for weight in (kernel, recurrent, bias):
        weight[..., 2 * UNITS + n:] = 0.0
    full = keras.layers.GRU(UNITS, return_sequences=True)
    full.build((None, 6, FEATURES))
    full.set_weights([kernel, recurrent, bias])
    x = np.where(np.arange(FEATURES) < n_in, X, 0.0).astype("float32")
    want = keras.ops.convert_to_numpy(full(x))
    np.testing.assert_array_equal(want[..., n:], 0.0)
    np.testing.assert_allclose(layer(X[..., :n_in], rate), want[..., :n], atol=1e-5)


def test_state_has_the_active_width_and_resumes_the_sequence():
    layer = _layer(return_sequences=True, return_state=True)
    plain = _plain_narrow(layer, 4, 2, return_sequences=True, return_state=True)
    x = X[..., :2]
    output, h = layer(x, 0.25)
    assert h.shape == (3, 4)
    for got, want in zip((output, h), plain(x)):
        np.testing.assert_allclose(got, want, atol=1e-5)
    _, h1 = layer(x[:, :2], 0.25)
    rest, _ = layer(x[:, 2:], 0.25, initial_state=h1)
    np.testing.assert_allclose(rest, output[:, 2:], atol=1e-5)


@pytest.mark.parametrize("reset_after", [True, False])
def test_extracted_width_is_a_plain_gru_and_saves(tmp_path, reset_after):
    x = keras.Input((6, FEATURES))
    rate = keras_slicing.rate_input()
    h = SlicedGRU(UNITS, slice_groups=4, slice_input=False, reset_after=reset_after)(x, rate)
    y = keras_slicing.layers.SlicedDense(3, slice_output=False)(h, rate)
    model = keras.Model([x, rate], y)
    quarter = keras_slicing.extract_submodel(model, 0.25)
    gru = quarter.layers[1]
    assert type(gru) is keras.layers.GRU and gru.units == 4
    np.testing.assert_allclose(quarter(X), model([X, np.full(3, 0.25, "float32")]), atol=1e-5)
    n, biases = 4, 2 if reset_after else 1
    params = 3 * n * (FEATURES + n) + biases * 3 * n + n * 3 + 3
    macs = 6 * 3 * n * (FEATURES + n) + n * 3
    assert keras_slicing.model_cost(model, 0.25) == {"params": params, "macs": macs}
    assert quarter.count_params() == params
    model.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras")
    feed = [X, np.full(3, 0.5, "float32")]
    np.testing.assert_array_equal(restored(feed), model(feed))


def test_dropout_is_rejected():
    with pytest.raises(ValueError, match="dropout=0.2"):
        SlicedGRU(16, dropout=0.2)


def test_units_not_divisible_are_rejected():
    with pytest.raises(ValueError, match=r"units=20 is not divisible by slice_groups=8"):
        SlicedGRU(20)
