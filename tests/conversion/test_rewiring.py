"""Channel rewiring: the full width is unchanged, narrow widths keep the best."""

import keras
import numpy as np
import pytest

import keras_slicing
from tests.conversion import plain_models

BUILDERS = {
    "sequential_cnn": plain_models.sequential_cnn,
    "residual_cnn": plain_models.residual_cnn,
    "text_classifier": plain_models.text_classifier,
    "transformer_block": plain_models.transformer_block,
}


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _data(model, n=16, seed=0):
    x = model.inputs[0]
    rng = np.random.default_rng(seed)
    if "int" in x.dtype:
        values = rng.integers(0, 40, (n, *x.shape[1:])).astype(x.dtype)
    else:
        values = rng.random((n, *x.shape[1:])).astype("float32")
    labels = rng.integers(0, model.outputs[0].shape[-1], n)
    return values, labels


# Every layer kind under "l1"; "bn" and "taylor" where they score differently
# (batch norms; gradients through convolutions, attention and recurrences).
CASES = [(name, "l1") for name in sorted(BUILDERS)] + [
    ("sequential_cnn", "bn"), ("residual_cnn", "bn"), ("residual_cnn", "taylor"),
    ("text_classifier", "taylor"), ("transformer_block", "taylor"),
]


@pytest.mark.parametrize("name,rewire", CASES)
def test_rewiring_leaves_the_full_width_unchanged(name, rewire):
    plain = BUILDERS[name]()
    x, y = _data(plain)
    sliced = keras_slicing.slice_model(plain, rewire=rewire, data=(x, y))
    want = _numpy(plain(x))
    scale = max(1.0, np.abs(want).max())
    np.testing.assert_allclose(_numpy(sliced(x)), want, atol=1e-5 * scale)


def test_rewiring_changes_the_order_of_the_channels():
    plain = plain_models.mlp()
    kept = _numpy(keras_slicing.slice_model(plain, rewire=None).get_layer("fc1").kernel)
    rewired = _numpy(keras_slicing.slice_model(plain, rewire="l1").get_layer("fc1").kernel)
    assert not np.array_equal(kept, rewired)
    np.testing.assert_array_equal(np.sort(kept, axis=1), np.sort(rewired, axis=1))


@pytest.mark.parametrize("rate", [0.5, 0.25])
def test_l1_narrow_width_keeps_the_units_of_largest_kernel_norm(rate):
    """Reference: the original with every other unit's weights zeroed."""
    plain = plain_models.mlp()
    x, _ = _data(plain)
    masked = keras.models.clone_model(plain)
    masked.set_weights(plain.get_weights())
    for name, units in (("fc1", 32), ("fc2", 16)):
        layer = masked.get_layer(name)
        norms = np.abs(_numpy(layer.kernel)).sum(axis=0)
        dropped = np.argsort(-norms, kind="stable")[int(units * rate):]
        kernel, bias = _numpy(layer.kernel).copy(), _numpy(layer.bias).copy()
        kernel[:, dropped], bias[dropped] = 0.0, 0.0
        layer.set_weights([kernel, bias])
    sliced = keras_slicing.slice_model(plain, rewire="l1")
    # tanh(0) = relu(0) = 0: a zeroed unit adds nothing downstream.
    np.testing.assert_allclose(_numpy(sliced.at_rate(rate)(x)), _numpy(masked(x)), atol=1e-5)


def test_bn_rewiring_puts_the_largest_batch_norm_scales_first():
    plain = plain_models.sequential_cnn()
    sliced = keras_slicing.slice_model(plain, rewire="bn")
    gamma = np.abs(_numpy(sliced.get_layer("stem_bn").gamma))
    assert np.all(np.diff(gamma) <= 0)
    np.testing.assert_array_equal(
        np.sort(gamma), np.sort(np.abs(_numpy(plain.get_layer("stem_bn").gamma)))
    )


def test_attention_heads_are_ordered_as_whole_heads():
    plain = plain_models.transformer_block()
    sliced = keras_slicing.slice_model(plain, rewire="l1")
    old = _numpy(plain.get_layer("attention").value_dense.kernel)  # (in, heads, dim)
    new = _numpy(sliced.get_layer("attention").value_dense.kernel)
    old_heads = {np.sort(np.abs(old[:, h]).ravel()).tobytes() for h in range(4)}
    new_heads = {np.sort(np.abs(new[:, h]).ravel()).tobytes() for h in range(4)}
    assert old_heads == new_heads
