import keras
import numpy as np
import pytest

import keras_slicing
from keras_slicing import keras_internals
from keras_slicing.extract import extract_submodel
from keras_slicing.layers.base import SlicedLayerMixin

L = keras_slicing.layers
K = keras.layers
RATES = (1.0, 0.75, 0.5, 0.25)


def _randomize(model, seed=1):
    """Random weights everywhere, positive variances: no layer is trivial."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        value = rng.normal(0.0, 0.5, variable.shape)
        if "variance" in variable.path:
            value = np.abs(value) + 0.5
        variable.assign(value.astype("float32"))


def _rich_model():
    x = keras.Input((8, 8, 3), name="image")
    r = keras_slicing.rate_input()
    h = L.SlicedConv2D(16, 3, padding="same", slice_input=False, name="stem")(x, r)
    h = L.SlicedBatchNormalization(rates=RATES, name="stem_bn")(h, r)
    h = K.ReLU()(h)
    skip = h
    h = L.SlicedDepthwiseConv2D(3, padding="same", name="depthwise")(h, r)
    h = L.SlicedGroupNormalization(groups=8, name="group_norm")(h, r)
    h = K.Activation("swish")(h)
    h = L.SlicedConv2D(16, 1, name="pointwise")(h, r)
    h = K.Add()([h, skip])
    gate = K.GlobalAveragePooling2D()(h)
    gate = K.Reshape((1, 1, -1))(gate)
    gate = K.Activation("sigmoid")(gate)
    h = K.Multiply()([h, gate])
    h = K.ZeroPadding2D(1)(h)
    h = K.MaxPooling2D(3, strides=1)(h)
    h = K.AveragePooling2D(2)(h)
    h = K.UpSampling2D(2)(h)
    h = K.Dropout(0.5)(h)
    side = K.Conv2D(3, 1, name="side")(x)
    # A sliced tensor concatenated last keeps the active channels a prefix.
    h = K.Concatenate(name="join")([side, h])
    h = L.SlicedConv2D(32, 3, strides=2, name="conv")(h, r)
    h = L.SlicedFlatten(name="flatten")(h)
    h = L.SlicedDense(16, activation="relu", name="hidden")(h, r)
    y = L.SlicedDense(10, slice_output=False, name="logits")(h, r)
    model = keras.Model([x, r], y, name="rich")
    _randomize(model)
    return model


def _sliced_output(model, x, rate):
    return keras.ops.convert_to_numpy(
        model([x, np.full((len(x),), rate, "float32")], training=False)
    )


def _images(n=4, shape=(8, 8, 3)):
    return np.random.default_rng(0).random((n, *shape)).astype("float32")


@pytest.mark.parametrize("rate", RATES)
def test_extracted_model_matches_source_at_rate(rate):
    model = _rich_model()
    x = _images()
    plain = extract_submodel(model, rate)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(plain(x)), _sliced_output(model, x, rate), atol=1e-5
    )


def test_extracted_model_takes_the_data_input_alone():
    plain = extract_submodel(_rich_model(), 0.5)
    assert [tuple(t.shape) for t in plain.inputs] == [(None, 8, 8, 3)]
    assert plain.inputs[0].name == "image"


def test_extracted_model_holds_only_standard_keras_layers():
    plain = extract_submodel(_rich_model(), 0.5)
    for layer in plain.layers:
        assert type(layer).__module__.startswith("keras."), type(layer)
        assert not isinstance(layer, SlicedLayerMixin)


def test_sliced_flatten_becomes_permute_then_flatten():
    plain = extract_submodel(_rich_model(), 0.5)
    names = [type(layer).__name__ for layer in plain.layers]
    at = names.index("Permute")
    assert names[at + 1] == "Flatten"
    assert plain.layers[at].dims == (3, 1, 2)


def test_extracted_layers_have_the_active_widths_at_half_rate():
    plain = extract_submodel(_rich_model(), 0.5)
    assert plain.get_layer("stem").filters == 8
    assert plain.get_layer("stem").kernel.shape == (3, 3, 3, 8)
    assert plain.get_layer("depthwise").kernel.shape == (3, 3, 8, 1)
    assert plain.get_layer("pointwise").kernel.shape == (1, 1, 8, 8)
    # 3 side channels + 8 active of 16.
    assert plain.get_layer("conv").kernel.shape == (3, 3, 11, 16)
    assert plain.get_layer("hidden").kernel.shape == (16 * 3 * 3, 8)
    assert plain.get_layer("logits").kernel.shape == (8, 10)


def test_group_normalization_keeps_channels_per_group():
    plain = extract_submodel(_rich_model(), 0.25)
    norm = plain.get_layer("group_norm")
    assert type(norm) is keras.layers.GroupNormalization
    assert norm.groups == 2  # 4 active channels, 2 per group as in 16 / 8


def test_extracted_weights_are_the_active_slices():
    model = _rich_model()
    plain = extract_submodel(model, 0.5)
    source = keras.ops.convert_to_numpy(model.get_layer("hidden").kernel)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(plain.get_layer("hidden").kernel),
        source[: 16 * 3 * 3, :8],
    )


def test_batch_normalization_holds_the_statistics_of_its_rate():
    model = _rich_model()
    norm = model.get_layer("stem_bn")
    table = np.arange(4 * 16, dtype="float32").reshape(4, 16)
    norm.moving_mean.assign(table)
    plain = extract_submodel(model, 0.5)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(plain.get_layer("stem_bn").moving_mean),
        table[RATES.index(0.5), :8],
    )


def test_extracted_model_shares_no_variable_with_the_source():
    model = _rich_model()
    x = _images()
    plain = extract_submodel(model, 0.75)
    before = keras.ops.convert_to_numpy(plain(x))
    for variable in model.weights:
        variable.assign(np.zeros(variable.shape, "float32"))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(plain(x)), before)


def test_extracted_model_round_trips_through_a_keras_file(tmp_path):
    plain = extract_submodel(_rich_model(), 0.25)
    x = _images()
    path = tmp_path / "plain.keras"
    plain.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x)),
        keras.ops.convert_to_numpy(plain(x)),
        atol=1e-6,
    )


def test_nested_functional_model_with_sliced_layers_is_replayed():
    x = keras.Input((6,))
    r = keras_slicing.rate_input()
    h = L.SlicedDense(16, slice_input=False, activation="relu")(x, r)
    inner = keras.Model([x, r], L.SlicedDense(8)(h, r), name="inner")
    x2 = keras.Input((6,))
    r2 = keras_slicing.rate_input()
    y = L.SlicedDense(3, slice_output=False)(inner([x2, r2]), r2)
    model = keras.Model([x2, r2], y)
    _randomize(model)
    data = np.random.default_rng(0).random((5, 6)).astype("float32")
    plain = extract_submodel(model, 0.25)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(plain(data)),
        _sliced_output(model, data, 0.25),
        atol=1e-5,
    )
    assert plain.count_params() == (6 * 4 + 4) + (4 * 2 + 2) + (2 * 3 + 3)


def test_concatenating_sliced_tensors_is_rejected_naming_the_layer():
    x = keras.Input((8, 8, 3))
    r = keras_slicing.rate_input()
    a = L.SlicedConv2D(8, 3, slice_input=False)(x, r)
    b = L.SlicedConv2D(8, 3, slice_input=False)(x, r)
    h = K.Concatenate(name="join_two")([a, b])
    y = L.SlicedConv2D(4, 1, slice_output=False)(h, r)
    model = keras.Model([x, r], y)
    # Refused whatever the rate: only the full width would be right.
    for rate in (1.0, 0.5):
        with pytest.raises(ValueError, match=r"'join_two' \(Concatenate\).*not a prefix"):
            extract_submodel(model, rate)


def test_plain_weighted_layer_reading_a_sliced_tensor_is_rejected():
    x = keras.Input((8,))
    r = keras_slicing.rate_input()
    h = L.SlicedDense(16, slice_input=False)(x, r)
    y = K.Dense(2, name="plain_head")(h)
    model = keras.Model([x, r], y)
    with pytest.raises(ValueError, match="'plain_head'.*cannot read a sliced"):
        extract_submodel(model, 0.5)


@keras.saving.register_keras_serializable(package="test_extract")
class _SlicedScale(SlicedLayerMixin, keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._init_slicing(8)

    def call(self, inputs, rate=None):
        return inputs * 2.0


def test_sliced_layer_without_standard_counterpart_is_named():
    x = keras.Input((8,))
    r = keras_slicing.rate_input()
    y = _SlicedScale(name="doubler")(x, r)
    model = keras.Model([x, r], y)
    with pytest.raises(ValueError, match="'doubler' \\(_SlicedScale\\)"):
        extract_submodel(model, 0.5)


def test_undeclared_batch_normalization_rate_is_rejected():
    with pytest.raises(ValueError, match="'stem_bn'.*Declared rates"):
        extract_submodel(_rich_model(), 0.3)


@pytest.mark.parametrize("rate", [0.0, 1.5, "half", None])
def test_rate_outside_zero_one_is_rejected(rate):
    with pytest.raises(ValueError, match="extract_submodel"):
        extract_submodel(_rich_model(), rate)


def test_subclassed_model_is_rejected():
    class Subclassed(keras.Model):
        def call(self, inputs):
            return inputs

    with pytest.raises(ValueError, match="functional"):
        extract_submodel(Subclassed(), 0.5)


def _joined_model(shape=(6, 6, 3)):
    """Two sliced branches of different widths joined group by group, twice."""
    x = keras.Input(shape, name="image")
    r = keras_slicing.rate_input()
    a = L.SlicedConv2D(16, 3, padding="same", slice_input=False, name="a")(x, r)
    b = L.SlicedConv2D(8, 1, slice_input=False, name="b")(x, r)
    h = L.SlicedConcatenate(name="join")([a, b], r)
    h = L.SlicedConv2D(8, 1, name="c")(h, r)
    h = L.SlicedConcatenate(name="join2")([h, a], r)
    y = L.SlicedDense(3, slice_output=False, name="logits")(
        K.GlobalAveragePooling2D()(h), r)
    model = keras.Model([x, r], y, name="joined")
    _randomize(model)
    return model


def test_sliced_concatenation_of_unknown_height_and_width_extracts():
    model = _joined_model(shape=(None, None, 3))
    x = _images(shape=(6, 6, 3))
    plain = extract_submodel(model, 0.5)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(plain(x)), _sliced_output(model, x, 0.5), atol=1e-5
    )


def test_sliced_concatenation_extracts_as_a_native_concatenation():
    """The interleaving goes into the weights of the layers reading the join."""
    plain = extract_submodel(_joined_model(), 0.5)
    kinds = [type(layer).__name__ for layer in plain.layers[1:]]
    assert kinds == ["Conv2D", "Conv2D", "Concatenate", "Conv2D", "Concatenate",
                     "GlobalAveragePooling2D", "Dense"]


def _join_readers_model():
    """A join read by layers that take its order into their weights (depthwise,
    batch norm), and by ones that need the sliced order back (group norm, add)."""
    x = keras.Input((6, 6, 3), name="image")
    r = keras_slicing.rate_input()
    a = L.SlicedConv2D(16, 3, padding="same", slice_input=False, name="a")(x, r)
    b = L.SlicedConv2D(8, 1, slice_input=False, name="b")(x, r)
    j = L.SlicedConcatenate(name="join")([a, b], r)
    d = L.SlicedDepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(j, r)
    d = K.ReLU()(L.SlicedBatchNormalization(rates=RATES, name="bn")(d, r))
    g = L.SlicedGroupNormalization(groups=8, name="gn")(j, r)
    s = K.Add(name="add")([j, L.SlicedConv2D(24, 1, slice_input=False, name="side")(x, r)])
    h = L.SlicedConcatenate(name="join2")([d, g, s], r)
    y = L.SlicedDense(3, slice_output=False, name="logits")(K.GlobalAveragePooling2D()(h), r)
    model = keras.Model([x, r], y, name="readers")
    _randomize(model)
    return model


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("build", [_joined_model, _join_readers_model], ids=["joins", "readers"])
def test_sliced_concatenation_extracts_to_standard_layers_computing_its_width(build, rate):
    model = build()
    x = _images(shape=(6, 6, 3))
    plain = extract_submodel(model, rate)
    layers = keras_internals.all_sublayers(plain)
    assert not any(isinstance(layer, SlicedLayerMixin) for layer in layers)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(plain(x)), _sliced_output(model, x, rate),
        atol=1e-5, rtol=1e-5,
    )
