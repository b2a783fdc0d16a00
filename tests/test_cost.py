import keras
import pytest

from keras_slicing import layers
from keras_slicing import model_cost
from keras_slicing import rate_input
from tests.sliced_models import small_cnn
from tests.sliced_models import small_mlp


@pytest.mark.parametrize("rate, h1, h2", [(1.0, 64, 32), (0.5, 32, 16), (0.25, 16, 8)])
def test_mlp_counts_only_active_weights(rate, h1, h2):
    cost = model_cost(small_mlp(features=64, classes=10), rate)
    assert cost["params"] == (64 * h1 + h1) + (h1 * h2 + h2) + (h2 * 10 + 10)
    assert cost["macs"] == 64 * h1 + h1 * h2 + h2 * 10


def test_conv_counts_positions_window_and_channels():
    x = keras.Input((10, 10, 3))
    rate = rate_input()
    h = layers.SlicedConv2D(16, 3, strides=2, padding="same", slice_input=False)(x, rate)
    h = layers.SlicedDepthwiseConv2D(3, padding="valid")(h, rate)
    h = layers.SlicedGroupNormalization(groups=8)(h, rate)
    h = layers.SlicedBatchNormalization()(h, rate)
    model = keras.Model([x, rate], h)
    c = 8  # active channels at 0.5
    cost = model_cost(model, 0.5)
    conv = (9 * 3 * c + c, 5 * 5 * 9 * 3 * c)
    depthwise = (9 * c + c, 3 * 3 * 9 * c)
    group_norm = (2 * c, 3 * 3 * c)
    batch_norm = (4 * c, 3 * 3 * c)
    parts = [conv, depthwise, group_norm, batch_norm]
    assert cost == {"params": sum(p for p, _ in parts), "macs": sum(m for _, m in parts)}


def test_separable_conv_counts_its_depthwise_and_pointwise_parts():
    x = keras.Input((10, 10, 16))
    rate = rate_input()
    h = layers.SlicedSeparableConv2D(32, 3, strides=2, padding="same",
                                     depth_multiplier=2)(x, rate)
    model = keras.Model([x, rate], h)
    # At 0.5 it reads all 16 channels of its input (data) and writes 16 of
    # 32; the depthwise part has c_in * depth_multiplier outputs.
    c_out, mid = 16, 32
    cost = model_cost(model, 0.5)
    depthwise = (9 * mid, 5 * 5 * 9 * mid)
    pointwise = (mid * c_out + c_out, 5 * 5 * mid * c_out)
    assert cost == {"params": depthwise[0] + pointwise[0],
                    "macs": depthwise[1] + pointwise[1]}
    assert model_cost(model, 1.0)["params"] == model.count_params()


def test_convnext_parts_are_counted_on_plain_and_sliced_models():
    import keras_slicing
    from tests.conversion.plain_models import convnext_block

    plain = convnext_block()
    positions = 4 * 4  # after the stride-2 stem
    parts = [  # (params, MACs)
        (2 * 2 * 3 * 16 + 16, positions * 2 * 2 * 3 * 16),  # stem
        (2 * 16, positions * 16),  # stem layer norm
        (9 * 32 + 32, positions * 9 * 32),  # grouped: one input channel each
        (2 * 32, positions * 32),  # layer norm
        (32 * 64 + 64, positions * 32 * 64),  # MLP in
        (64 * 16 + 16, positions * 64 * 16),  # MLP out
        (16, positions * 16),  # layer scale: a multiply per element
        (16 * 4 + 4, 16 * 4),  # logits
    ]
    want = {"params": sum(p for p, _ in parts), "macs": sum(m for _, m in parts)}
    assert model_cost(plain) == want
    assert want["params"] == plain.count_params()
    assert model_cost(keras_slicing.slice_model(plain)) == want


def test_full_rate_params_match_keras_count_of_trainable_weights():
    model = small_mlp()
    assert model_cost(model, 1.0)["params"] == model.count_params()


def test_cost_falls_with_the_square_of_the_rate():
    model = small_cnn()
    full = model_cost(model, 1.0)["macs"]
    half = model_cost(model, 0.5)["macs"]
    assert 0.2 < half / full < 0.35


def test_unknown_weighted_layer_is_named_in_the_error():
    x = keras.Input((8,))
    rate = rate_input()
    h = layers.SlicedDense(8, slice_input=False)(x, rate)
    h = keras.layers.PReLU(name="learned_slope")(h)
    with pytest.raises(ValueError, match="learned_slope.*PReLU"):
        model_cost(keras.Model([x, rate], h), 0.5)


def test_invalid_rate_is_rejected():
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        model_cost(small_mlp(), 0.0)


def test_nested_model_is_costed_layer_by_layer():
    inner_x = keras.Input((16,))
    inner_rate = rate_input()
    inner = keras.Model(
        [inner_x, inner_rate],
        layers.SlicedDense(16, activation="relu")(inner_x, inner_rate),
        name="inner",
    )
    x = keras.Input((8,))
    rate = rate_input()
    h = layers.SlicedDense(16, slice_input=False)(x, rate)
    h = inner([h, rate])
    y = layers.SlicedDense(4, slice_output=False)(h, rate)
    cost = model_cost(keras.Model([x, rate], y), 0.5)
    assert cost == {
        "params": (8 * 8 + 8) + (8 * 8 + 8) + (8 * 4 + 4),
        "macs": 8 * 8 + 8 * 8 + 8 * 4,
    }


@pytest.mark.parametrize("rate, k", [(1.0, 4), (0.5, 2), (0.25, 1)])
def test_concatenation_is_free_and_its_reader_counts_the_joined_width(rate, k):
    x = keras.Input((8,))
    r = rate_input()
    a = layers.SlicedDense(8, slice_input=False, slice_groups=4)(x, r)
    b = layers.SlicedDense(4, slice_input=False, slice_groups=4)(x, r)
    h = layers.SlicedConcatenate(slice_groups=4)([a, b], r)
    y = layers.SlicedDense(3, slice_output=False, slice_groups=4)(h, r)
    cost = model_cost(keras.Model([x, r], y), rate)
    na, nb = 2 * k, k  # active units of a and b
    assert cost == {
        "params": (8 * na + na) + (8 * nb + nb) + ((na + nb) * 3 + 3),
        "macs": 8 * na + 8 * nb + (na + nb) * 3,
    }
