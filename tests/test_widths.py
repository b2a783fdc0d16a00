import keras
import numpy as np
import pytest

import keras_slicing
from keras_slicing import WidthConfig
from keras_slicing import extract_submodel
from keras_slicing import model_cost
from keras_slicing import width_groups
from tests.sliced_models import randomize_weights
from tests.sliced_models import small_bn_cnn
from tests.sliced_models import small_cnn

L = keras_slicing.layers
K = keras.layers


def _residual_model():
    """stem and b1 meet in an Add; c is free; GN follows b1."""
    x = keras.Input((6, 6, 2), name="image")
    r = keras_slicing.rate_input()
    a = L.SlicedConv2D(16, 3, padding="same", slice_input=False, name="stem")(x, r)
    b = L.SlicedConv2D(16, 3, padding="same", name="b1")(a, r)
    b = L.SlicedGroupNormalization(groups=8, name="gn")(b, r)
    h = K.Add(name="add")([a, b])
    h = L.SlicedConv2D(32, 1, name="c", activation="relu")(h, r)
    h = K.GlobalAveragePooling2D()(h)
    y = L.SlicedDense(5, slice_output=False, name="head")(h, r)
    model = keras.Model([x, r], y, name="residual")
    randomize_weights(model)
    return model


def _plain_residual(model, stem, c):
    """The model by hand: plain layers of `stem` and `c` channels."""
    x = keras.Input((6, 6, 2))
    a = K.Conv2D(stem, 3, padding="same")(x)
    b = K.Conv2D(stem, 3, padding="same")(a)
    b = K.GroupNormalization(groups=stem // 2)(b)
    h = K.Add()([a, b])
    h = K.Conv2D(c, 1, activation="relu")(h)
    h = K.GlobalAveragePooling2D()(h)
    plain = keras.Model(x, K.Dense(5)(h))
    sliced = {layer.name: layer for layer in model.layers}
    conv1, conv2, gn, conv3, dense = [
        layer for layer in plain.layers if layer.weights
    ]
    kernel, bias = sliced["stem"].get_weights()
    conv1.set_weights([kernel[..., :stem], bias[:stem]])
    kernel, bias = sliced["b1"].get_weights()
    conv2.set_weights([kernel[..., :stem, :stem], bias[:stem]])
    gamma, beta = sliced["gn"].get_weights()
    gn.set_weights([gamma[:stem], beta[:stem]])
    kernel, bias = sliced["c"].get_weights()
    conv3.set_weights([kernel[..., :stem, :c], bias[:c]])
    kernel, bias = sliced["head"].get_weights()
    dense.set_weights([kernel[:c], bias])
    return plain


def test_width_groups_join_layers_whose_outputs_meet():
    groups = width_groups(_residual_model())
    assert [(g.name, g.layers, g.merges) for g in groups] == [
        ("stem", ("stem", "b1"), ("add",)),
        ("c", ("c",), ()),
    ]


def test_a_sliced_concatenation_runs_its_inputs_at_one_width():
    x = keras.Input((6, 6, 2))
    r = keras_slicing.rate_input()
    a = L.SlicedConv2D(16, 1, slice_input=False, name="a")(x, r)
    b = L.SlicedConv2D(8, 1, slice_input=False, name="b")(x, r)
    h = L.SlicedConcatenate(name="join")([a, b], r)
    h = L.SlicedConv2D(8, 1, name="c")(h, r)
    y = L.SlicedDense(2, slice_output=False, name="head")(K.GlobalAveragePooling2D()(h), r)
    model = keras.Model([x, r], y)
    assert [(g.name, g.layers, g.merges) for g in width_groups(model)] == [
        ("a", ("a", "b"), ("join",)),
        ("c", ("c",), ()),
    ]
    with pytest.raises(ValueError, match=r"'a' and 'b' belong to width group 'a'"):
        model_cost(model, WidthConfig({"a": 0.5, "b": 0.25}))


def test_unknown_group_is_rejected():
    with pytest.raises(ValueError, match="'conv9' is not a width group"):
        model_cost(_residual_model(), {"conv9": 0.5})


@pytest.mark.parametrize("rate", [0.0, 1.5, float("nan"), "half"])
def test_rate_out_of_range_is_rejected(rate):
    with pytest.raises(ValueError, match=r"group 'c'.*\(0, 1\]"):
        WidthConfig({"c": rate})


def test_two_rates_for_one_merge_are_rejected():
    with pytest.raises(ValueError, match=r"'stem' and 'b1'.*\['add'\]"):
        extract_submodel(_residual_model(), {"stem": 0.5, "b1": 0.25})


def test_mixed_config_of_a_batch_norm_model_without_data_is_rejected():
    model = small_cnn()
    first = width_groups(model)[0].name
    with pytest.raises(ValueError, match="SlicedBatchNormalization.*calibration_data"):
        extract_submodel(model, {first: 0.5})


def test_cost_of_a_mixed_config_of_a_batch_norm_model_counts_its_layers():
    model = small_bn_cnn()
    # conv1 3x3x2x4 on 6x6, bn1 over 4, conv2 3x3x4x6, bn2 over 6, head 6x3.
    macs = 36 * 18 * 4 + 36 * 4 + 36 * 36 * 6 + 36 * 6 + 6 * 3
    assert model_cost(model, {"conv1": 0.5, "conv2": 0.75})["macs"] == macs


def _plain_bn_cnn(model, c1, c2, calibration):
    """The model by hand, its statistics set from numpy moments of `calibration`."""
    x = keras.Input((6, 6, 2))
    a = K.Conv2D(c1, 3, padding="same")(x)
    b = K.BatchNormalization()(a)
    h = K.Conv2D(c2, 3, padding="same")(K.ReLU()(b))
    n = K.BatchNormalization()(h)
    y = K.Dense(3)(K.GlobalAveragePooling2D()(K.ReLU()(n)))
    plain = keras.Model(x, y)
    sliced = {layer.name: layer.get_weights() for layer in model.layers}
    conv1, bn1, conv2, bn2, dense = [layer for layer in plain.layers if layer.weights]
    kernel, bias = sliced["conv1"]
    conv1.set_weights([kernel[..., :c1], bias[:c1]])
    kernel, bias = sliced["conv2"]
    conv2.set_weights([kernel[..., :c1, :c2], bias[:c2]])
    kernel, bias = sliced["head"]
    dense.set_weights([kernel[:c2], bias])
    for norm, name, c, inputs in ((bn1, "bn1", c1, a), (bn2, "bn2", c2, h)):
        gamma, beta = sliced[name][:2]
        values = keras.Model(x, inputs).predict(calibration, verbose=0)
        norm.set_weights(
            [gamma[:c], beta[:c], values.mean((0, 1, 2)), values.var((0, 1, 2))]
        )
    return plain


def _bn_data(n=40, seed=1):
    return np.random.default_rng(seed).normal(size=(n, 6, 6, 2)).astype("float32")


def test_mixed_config_of_a_batch_norm_model_matches_numpy_statistics():
    model = small_bn_cnn()
    randomize_weights(model)
    calibration, x = _bn_data(), _bn_data(5, seed=2)
    # One batch: each layer's batch moments are then the pooled ones.
    plain = extract_submodel(
        model, {"conv1": 0.5, "conv2": 0.75}, calibration_data=calibration,
        batch_size=64,
    )
    np.testing.assert_allclose(
        plain.predict(x, verbose=0),
        _plain_bn_cnn(model, 4, 6, calibration).predict(x, verbose=0),
        atol=1e-4,
    )


def test_recomputed_statistics_pool_every_batch():
    model = small_bn_cnn()
    randomize_weights(model)
    calibration = _bn_data()
    plain = extract_submodel(
        model, {"conv1": 0.25, "conv2": 1.0}, calibration_data=calibration,
        batch_size=16,
    )
    reference = _plain_bn_cnn(model, 2, 8, calibration)
    # bn1's input depends on no batch norm, so its moments are the data's.
    np.testing.assert_allclose(
        plain.get_layer("bn1").get_weights(),
        reference.layers[2].get_weights(),
        rtol=1e-4, atol=1e-5,
    )


def test_uniform_config_with_calibration_data_keeps_the_models_statistics():
    model = small_bn_cnn()
    randomize_weights(model)
    x = _bn_data(5)
    plain = extract_submodel(
        model, {"conv1": 0.5, "conv2": 0.5}, calibration_data=_bn_data()
    )
    np.testing.assert_allclose(
        plain.predict(x, verbose=0),
        extract_submodel(model, 0.5).predict(x, verbose=0),
        atol=1e-6,
    )


def test_uniform_config_of_a_batch_norm_model_equals_its_rate():
    model = small_cnn()
    randomize_weights(model)
    config = {g.name: 0.5 for g in width_groups(model)}
    x = np.random.default_rng(0).normal(size=(3, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(
        extract_submodel(model, config).predict(x, verbose=0),
        extract_submodel(model, 0.5).predict(x, verbose=0),
        atol=1e-6,
    )


@pytest.mark.parametrize("stem_rate, c_rate", [(0.25, 1.0), (0.75, 0.5)])
def test_cost_of_a_mixed_config_matches_a_hand_count(stem_rate, c_rate):
    stem, c = int(16 * stem_rate), int(32 * c_rate)
    macs = (
        36 * 9 * 2 * stem  # stem
        + 36 * 9 * stem * stem  # b1
        + 36 * stem  # gn scale and shift
        + 36 * stem * c  # c
        + c * 5  # head
    )
    params = (
        (9 * 2 * stem + stem) + (9 * stem * stem + stem) + 2 * stem
        + (stem * c + c) + (c * 5 + 5)
    )
    model = _residual_model()
    config = {"stem": stem_rate, "c": c_rate}
    assert model_cost(model, config) == {"params": params, "macs": macs}
    assert extract_submodel(model, config).count_params() == params


def test_extracted_model_at_a_mixed_config_matches_the_model_by_hand():
    model = _residual_model()
    config = WidthConfig({"b1": 0.25, "c": 0.75})  # a layer names its group
    x = np.random.default_rng(1).normal(size=(4, 6, 6, 2)).astype("float32")
    expected = _plain_residual(model, 4, 24).predict(x, verbose=0)
    extracted = extract_submodel(model, config)
    assert [layer.filters for layer in extracted.layers if hasattr(layer, "filters")] == [
        4, 4, 24,
    ]
    np.testing.assert_allclose(extracted.predict(x, verbose=0), expected, atol=1e-5)


def test_sliced_model_at_a_mixed_config_matches_the_model_by_hand():
    inner = _residual_model()
    model = keras_slicing.SlicingModel(inner.inputs, inner.outputs)
    config = {"stem": 0.5, "c": 0.25}
    x = np.random.default_rng(2).normal(size=(4, 6, 6, 2)).astype("float32")
    expected = _plain_residual(model, 8, 8).predict(x, verbose=0)
    np.testing.assert_allclose(
        model.at_rate(config).predict(x, verbose=0), expected, atol=1e-5
    )


def test_equivalent_rate_of_a_uniform_config_is_its_rate():
    model = _residual_model()
    config = {"stem": 0.5, "c": 0.5}
    assert keras_slicing.widths.equivalent_rate(model, config) == 0.5
    mixed = keras_slicing.widths.equivalent_rate(model, {"stem": 0.5, "c": 1.0})
    assert 0.5 < mixed < 1.0


def _attention_block():
    """Full-width residual stream; heads and feed-forward units sliced."""
    ids = keras.Input((6,), dtype="int32", name="ids")
    r = keras_slicing.rate_input()
    x = L.SlicedEmbedding(11, 16, slice_output=False, name="embedding")(ids, r)
    h = L.SlicedMultiHeadAttention(4, 4, name="attention")(x, x, rate=r)
    x = K.Add()([x, h])
    h = L.SlicedDense(32, activation="relu", slice_input=False, name="ffn_in")(x, r)
    h = L.SlicedDense(16, slice_output=False, name="ffn_out")(h, r)
    x = K.Add()([x, h])
    model = keras.Model([ids, r], K.Dense(11, name="logits")(x), name="block")
    randomize_weights(model)
    return model


def test_attention_heads_and_feed_forward_are_groups_of_their_own():
    groups = width_groups(_attention_block())
    assert [(g.name, g.slice_groups) for g in groups] == [
        ("attention", 4), ("ffn_in", 8),
    ]


def test_extracted_attention_block_at_a_mixed_config_matches_the_sliced_one():
    model = _attention_block()
    config = {"attention": 0.25, "ffn_in": 0.75}
    ids = np.random.default_rng(3).integers(0, 11, size=(2, 6)).astype("int32")
    extracted = extract_submodel(model, config)
    layers = {layer.name: layer for layer in extracted.layers}
    assert (layers["attention"].num_heads, layers["ffn_in"].units) == (1, 24)
    sliced = keras.ops.convert_to_numpy(model([ids, np.full((2,), 1.0)]))
    assert not np.allclose(extracted.predict(ids, verbose=0), sliced, atol=1e-3)
    runner = keras_slicing.SlicingModel(model.inputs, model.outputs)
    np.testing.assert_allclose(
        extracted.predict(ids, verbose=0),
        runner.at_rate(config).predict(ids, verbose=0),
        atol=1e-5,
    )
