"""slice_model: the converted model computes what the original computes."""

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

import keras_slicing
from tests.conversion import plain_models

BUILDERS = {
    "sequential_cnn": plain_models.sequential_cnn,
    "residual_cnn": plain_models.residual_cnn,
    "mlp": plain_models.mlp,
}


def _inputs(model, n=4, seed=0):
    shape = tuple(model.inputs[0].shape[1:])
    return np.random.default_rng(seed).random((n, *shape)).astype("float32")


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_full_width_matches_the_original(name):
    plain = BUILDERS[name]()
    x = _inputs(plain)
    sliced = keras_slicing.slice_model(plain)
    np.testing.assert_allclose(_numpy(sliced(x)), _numpy(plain(x)), atol=1e-5)


def test_full_width_matches_on_digits():
    # Keras' initializers: logits of the size a trained model gives.
    plain = plain_models.sequential_cnn(random=False)
    images = load_digits().images[:64, :, :, None].astype("float32") / 16.0
    sliced = keras_slicing.slice_model(plain)
    np.testing.assert_allclose(
        _numpy(sliced.predict(images, verbose=0)),
        _numpy(plain.predict(images, verbose=0)),
        atol=1e-5,
    )


def test_result_is_a_slicing_model_with_a_rate_input():
    sliced = keras_slicing.slice_model(plain_models.mlp(), rates=(1.0, 0.5))
    assert isinstance(sliced, keras_slicing.SlicingModel)
    assert sliced.rates == (1.0, 0.5)
    assert [x.name for x in sliced.inputs][-1] == "slice_rate"
    keras_slicing.check_model(sliced)


def test_every_weight_is_carried_over_unchanged_without_rewiring():
    plain = plain_models.residual_cnn()
    sliced = keras_slicing.slice_model(plain, rewire=None)
    for layer in plain.layers[1:]:
        new = sliced.get_layer(layer.name)
        for old, value in zip(layer.weights, new.weights):
            have = _numpy(value)
            want = _numpy(old)
            if have.shape != want.shape:  # batch norm: one row per rate
                want = np.broadcast_to(want, have.shape)
            np.testing.assert_array_equal(have, want)


def test_data_and_output_layers_are_not_sliced_on_their_outer_side():
    sliced = keras_slicing.slice_model(plain_models.sequential_cnn())
    stem, logits = sliced.get_layer("stem"), sliced.get_layer("logits")
    assert (stem.slice_input, stem.slice_output) == (False, True)
    assert (logits.slice_input, logits.slice_output) == (True, False)
    assert isinstance(sliced.get_layer("flatten"), keras_slicing.layers.SlicedFlatten)


def _masked(plain, kept):
    """The original with every channel past `kept[name]` of a layer zeroed.

    A zero channel (zero kernel column, bias, and batch-norm scale and
    offset) adds nothing to the layers after it: the reference of a narrow
    width that shares no code with slice_model.
    """
    masked = keras.models.clone_model(plain)
    masked.set_weights(plain.get_weights())
    for name, n in kept.items():
        layer = masked.get_layer(name)
        for variable in layer.weights:
            if any(variable.path.endswith(k) for k in ("kernel", "bias", "gamma", "beta")):
                value = _numpy(variable).copy()
                value[..., n:] = 0.0
                variable.assign(value)
    return masked


@pytest.mark.parametrize("rate", [0.75, 0.5, 0.25])
def test_narrow_width_equals_the_original_with_the_dropped_channels_zeroed(rate):
    plain = plain_models.residual_cnn()
    x = _inputs(plain)
    sliced = keras_slicing.slice_model(plain, rewire=None)
    n16 = int(16 * rate)
    kept = {"stem": n16, "stem_bn": n16, "dw_bn": n16, "se_expand": n16,
            "se_reduce": int(8 * rate),
            "project": n16, "conv2": n16, "expand": int(24 * rate)}
    want = _numpy(_masked(plain, kept)(x))
    have = _numpy(sliced.at_rate(rate)(x))
    np.testing.assert_allclose(have, want, atol=1e-5)


def test_dense_after_flatten_reads_the_features_channel_by_channel():
    plain = plain_models.sequential_cnn()
    sliced = keras_slicing.slice_model(plain, rewire=None)
    kernel = _numpy(plain.get_layer("hidden").kernel)  # rows: (3, 3, 32)
    channel_major = kernel.reshape(3, 3, 32, -1).transpose(2, 0, 1, 3).reshape(288, -1)
    np.testing.assert_array_equal(_numpy(sliced.get_layer("hidden").kernel), channel_major)


def test_plan_of_a_transformer_shows_sliced_heads_and_costs():
    # The residual stream (and so the embedding) kept full, as in MatFormer.
    plain = plain_models.transformer_block()
    sliced = keras_slicing.slice_model(plain, keep_full=("embed",), rates=(1.0, 0.5))
    plan = sliced.slicing_plan
    assert plan.row("embed").status == "full"
    assert plan.row("attention").status == "sliced heads"
    assert "attention" in plan.sliced_layers
    attention = plain.get_layer("attention")  # heads of 8, residual width 32
    qkv = 3 * (32 * 4 * 8 + 4 * 8)  # query, key and value of every head
    output = 4 * 8 * 32 + 32
    dropped = (qkv + output - 32) // 2  # half the heads; the output bias stays
    assert attention.count_params() == qkv + output
    assert plan.costs[1.0]["params"] == plain.count_params()
    mlp = (32 * 32 + 32) + 32 * 32  # half of mlp_in's units, mlp_out's inputs
    assert plan.costs[1.0]["params"] - plan.costs[0.5]["params"] == dropped + mlp
