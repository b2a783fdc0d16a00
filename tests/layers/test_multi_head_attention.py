import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_slicing
from keras_slicing.layers import SlicedMultiHeadAttention
from tests.layers import harness

HEADS, KEY_DIM, FEATURES = 4, 8, 16
RATES = [(1.0, 4), (0.75, 3), (0.5, 2), (0.25, 1)]
X = np.random.default_rng(0).normal(size=(2, 5, FEATURES)).astype("float32")


def _layer(**kwargs):
    layer = SlicedMultiHeadAttention(
        HEADS, KEY_DIM, bias_initializer="random_normal", **kwargs
    )
    layer.build((None, 5, FEATURES), (None, 5, FEATURES))
    return layer


# A rate keeps the first heads; query and value keep their width.
CASES = {
    f"causal_{causal}": harness.LayerCase(
        _layer, lambda rate: (X, X), keras.layers.MultiHeadAttention,
        call_kwargs={"use_causal_mask": causal},
    )
    for causal in (False, True)
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("check", harness.CHECKS, ids=harness.check_id)
def test_sliced_layer_contract(check, case, tmp_path):
    check(CASES[case], tmp_path)


def _plain(layer, heads, n_in, n_out=None):
    """A plain MultiHeadAttention holding the first `heads` heads (numpy cut)."""
    n_out = n_out or n_in
    wq, bq, wk, bk, wv, bv, wo, bo = layer.get_weights()
    plain = keras.layers.MultiHeadAttention(heads, KEY_DIM, output_shape=n_out)
    plain.build((None, 5, n_in), (None, 5, n_in))
    plain.set_weights([
        wq[:n_in, :heads], bq[:heads], wk[:n_in, :heads], bk[:heads],
        wv[:n_in, :heads], bv[:heads], wo[:heads, :, :n_out], bo[:n_out],
    ])
    return plain


@pytest.mark.parametrize("rate, heads", RATES[1:])
def test_narrow_width_is_full_layer_without_the_inactive_heads(rate, heads):
    layer = _layer()
    weights = layer.get_weights()
    weights[6][heads:] = 0.0  # output projection rows of the inactive heads
    full = keras.layers.MultiHeadAttention(HEADS, KEY_DIM)
    full.build((None, 5, FEATURES), (None, 5, FEATURES))
    full.set_weights(weights)
    np.testing.assert_allclose(layer(X, X, rate=rate), full(X, X), atol=1e-5)


def test_narrow_query_gives_an_equally_narrow_output():
    layer = _layer()
    x = X[..., :8]
    plain = _plain(layer, 2, 8)
    np.testing.assert_allclose(layer(x, x, rate=0.5), plain(x, x), atol=1e-5)
    run = tf.function(lambda x, r: layer(x, x, rate=r))
    np.testing.assert_allclose(run(x, tf.fill([2], 0.5)), plain(x, x), atol=1e-5)


def test_attention_mask_and_scores_match_plain_layer():
    layer = _layer()
    plain = _plain(layer, 3, FEATURES)
    mask = np.random.default_rng(1).random((2, 5, 5)) > 0.3
    mask[..., 0] = True
    got, got_scores = layer(X, X, rate=0.75, attention_mask=mask, return_attention_scores=True)
    want, want_scores = plain(X, X, attention_mask=mask, return_attention_scores=True)
    assert got_scores.shape == (2, 3, 5, 5)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-6)


def _model(output_shape=None):
    x = keras.Input((5, FEATURES))
    rate = keras_slicing.rate_input()
    h = keras_slicing.layers.SlicedDense(FEATURES, slice_groups=4, slice_input=False)(x, rate)
    h = SlicedMultiHeadAttention(HEADS, KEY_DIM, output_shape=output_shape)(
        h, h, rate=rate, use_causal_mask=True
    )
    y = keras_slicing.layers.SlicedDense(3, slice_output=False)(h, rate)
    return keras.Model([x, rate], y)


def test_extracted_width_is_a_plain_attention_and_costs_its_heads(tmp_path):
    model = _model()
    half = keras_slicing.extract_submodel(model, 0.5)
    attention = half.layers[2]
    assert type(attention) is keras.layers.MultiHeadAttention
    assert attention.num_heads == 2
    np.testing.assert_allclose(half(X), model([X, np.full(2, 0.5, "float32")]), atol=1e-5)
    d, k, t = 8, 2 * KEY_DIM, 5  # active features, active head dims, steps
    attention_params = 3 * (d + 1) * k + (k + 1) * d
    attention_macs = 3 * t * d * k + 2 * t * t * k + t * k * d
    params = (FEATURES + 1) * d + attention_params + (d + 1) * 3
    macs = t * FEATURES * d + attention_macs + t * d * 3
    assert keras_slicing.model_cost(model, 0.5) == {"params": params, "macs": macs}
    assert half.count_params() == params
    model.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras")
    feed = [X, np.full(2, 0.25, "float32")]
    np.testing.assert_allclose(restored(feed), model(feed), atol=0)


def test_output_width_follows_the_query_unless_output_shape_is_set():
    assert SlicedMultiHeadAttention(2, 4).follows_input_width
    fixed = SlicedMultiHeadAttention(2, 4, output_shape=12)
    assert not fixed.follows_input_width and not fixed.narrows_channels
    model = _model(output_shape=12)
    assert keras_slicing.extract_submodel(model, 0.25).layers[2].num_heads == 1


def test_separate_key_is_rejected():
    layer = _layer()
    with pytest.raises(ValueError, match="separate key"):
        layer(X, X, key=X + 1.0, rate=0.5)


def test_unsupported_arguments_are_rejected():
    with pytest.raises(ValueError, match="use_gate"):
        SlicedMultiHeadAttention(2, 4, use_gate=True)
    with pytest.raises(ValueError, match="attention_axes"):
        SlicedMultiHeadAttention(2, 4, attention_axes=(1, 2))
    with pytest.raises(ValueError, match="output_shape"):
        SlicedMultiHeadAttention(2, 4, output_shape=(4, 4))


def test_fixed_output_shape_survives_a_round_trip(tmp_path):
    model = _model(output_shape=12)
    model.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras")
    feed = [X, np.full(2, 0.5, "float32")]
    np.testing.assert_array_equal(restored(feed), model(feed))
