"""check_model: wrong constructions are refused before training, right ones pass."""

import keras
import numpy as np
import pytest

import keras_slicing
from keras_slicing import check_model

L = keras_slicing.layers
K = keras.layers


def _model(build, shape=(6, 6, 3)):
    x = keras.Input(shape, name="image")
    r = keras_slicing.rate_input()
    return keras.Model([x, r], build(x, r), name="m")


def _stem(x, r, **kwargs):
    return L.SlicedConv2D(16, 3, padding="same", slice_input=False, name="stem",
                          **kwargs)(x, r)


def _head(h, r):
    return L.SlicedDense(4, slice_output=False, name="head")(h, r)


_FOLLOWERS = {
    "batch_norm": lambda h, r: L.SlicedBatchNormalization(name="bn")(h, r),
    "group_norm": lambda h, r: L.SlicedGroupNormalization(groups=8, name="gn")(h, r),
    "depthwise": lambda h, r: L.SlicedDepthwiseConv2D(3, padding="same", name="dw")(h, r),
}


@pytest.mark.parametrize("follower", sorted(_FOLLOWERS))
@pytest.mark.parametrize("between", ["none", "relu", "dropout"])
def test_plain_flatten_behind_a_width_following_layer_is_refused(follower, between):
    def build(x, r):
        h = _FOLLOWERS[follower](_stem(x, r), r)
        if between == "relu":
            h = K.ReLU(name="relu")(h)
        h = K.Flatten(name="flat")(h)
        if between == "dropout":
            h = K.Dropout(0.2, name="drop")(h)
        return _head(h, r)

    with pytest.raises(ValueError, match=r"'head'.*'flat' \(Flatten\).*'stem'.*SlicedFlatten"):
        check_model(_model(build))


def test_plain_flatten_behind_batch_norm_was_a_different_model():
    """Why it is refused: the narrow width is not the zero-masked full model."""
    def build(x, r):
        h = L.SlicedBatchNormalization(name="bn")(_stem(x, r), r)
        return _head(K.Flatten()(h), r)

    x = keras.Input((6, 6, 3))
    r = keras_slicing.rate_input()
    model = keras.Model([x, r], build(x, r))
    images = np.random.default_rng(0).random((2, 6, 6, 3)).astype("float32")
    for v in model.weights:
        v.assign(np.random.default_rng(1).normal(0, 0.3, v.shape).astype("float32")
                 if "variance" not in v.path else np.ones(v.shape, "float32"))
    # Its layers called one by one (the model itself refuses to run).
    stem, bn, head = (model.get_layer(n) for n in ("stem", "bn", "head"))
    half = keras.ops.convert_to_numpy(
        head(K.Flatten()(bn(stem(images, 0.5), 0.5)), 0.5)
    )
    # Reference: plain layers on the full width, inactive channels zeroed.
    full = keras.ops.convert_to_numpy(
        keras.ops.conv(images, stem.kernel, padding="same") + stem.bias
    )
    full[..., 8:] = 0.0
    gamma, beta = (keras.ops.convert_to_numpy(w) for w in (bn.gamma, bn.beta))
    mean, var = (keras.ops.convert_to_numpy(w)[bn.row_of(0.5)] for w in (bn.moving_mean, bn.moving_variance))
    normed = (full - mean) / np.sqrt(var + bn.epsilon) * gamma + beta
    normed[..., 8:] = 0.0
    reference = normed.reshape(2, -1) @ keras.ops.convert_to_numpy(head.kernel)
    reference += keras.ops.convert_to_numpy(head.bias)
    assert np.abs(half - reference).max() > 1e-3


@pytest.mark.parametrize(
    "name, build, message",
    [
        (
            "plain dense",
            lambda x, r: K.Dense(4, name="plain")(K.GlobalAveragePooling2D()(_stem(x, r))),
            r"'plain' \(Dense\).*'stem'.*SlicedDense.*slice_output=False",
        ),
        (
            "add with the image",
            lambda x, r: _head(K.GlobalAveragePooling2D()(
                K.Add(name="add")([K.Conv2D(16, 1, name="side")(x), _stem(x, r)])), r),
            r"'add' \(Add\).*'stem'.*full-width tensor 'side'",
        ),
        (
            "add of different slice_groups",
            lambda x, r: _head(K.GlobalAveragePooling2D()(K.Add(name="add")([
                L.SlicedConv2D(16, 1, slice_input=False, slice_groups=4, name="four")(x, r),
                _stem(x, r),
            ])), r),
            r"'add' \(Add\).*slice_groups=4 from 'four'.*slice_groups=8 from 'stem'",
        ),
        (
            "ops add with the image",
            lambda x, r: _head(K.GlobalAveragePooling2D()(
                _stem(x, r) + K.Conv2D(16, 1, name="side")(x)), r),
            r"\(Add\).*'stem'.*full-width",
        ),
        (
            "forgotten slice_output=False",
            lambda x, r: L.SlicedDense(8, name="logits")(K.GlobalAveragePooling2D()(_stem(x, r)), r),
            r"output.*'logits' \(SlicedDense\).*slice_output=False",
        ),
        (
            "concatenate with the sliced tensor first",
            lambda x, r: _head(K.GlobalAveragePooling2D()(K.Concatenate(name="cat")([_stem(x, r), x])), r),
            r"'cat' \(Concatenate\).*input 0 from 'stem'.*not a prefix",
        ),
        (
            "plain concatenate of two sliced tensors",
            lambda x, r: _head(K.GlobalAveragePooling2D()(K.Concatenate(name="cat")([
                _stem(x, r), L.SlicedConv2D(8, 1, slice_input=False, name="side")(x, r)])), r),
            r"'cat' \(Concatenate\).*input 0 from 'stem'.*SlicedConcatenate",
        ),
        (
            "sliced concatenate of a full-width tensor",
            lambda x, r: _head(K.GlobalAveragePooling2D()(L.SlicedConcatenate(name="cat")(
                [_stem(x, r), K.Conv2D(8, 1, name="side")(x)], r)), r),
            r"'cat' \(SlicedConcatenate\).*input 1 'side' is a full-width.*Slice that input",
        ),
        (
            "sliced concatenate of other slice_groups",
            lambda x, r: _head(K.GlobalAveragePooling2D()(L.SlicedConcatenate(name="cat")(
                [_stem(x, r), L.SlicedConv2D(8, 1, slice_input=False, slice_groups=4,
                                             name="four")(x, r)], r)), r),
            r"'cat' \(SlicedConcatenate\).*input 1 is slice_groups=4 from 'four'.*"
            r"Give 'four' \(SlicedConv2D\) slice_groups=8",
        ),
        (
            "slice_input=False on a sliced tensor",
            lambda x, r: L.SlicedConv2D(8, 1, slice_input=False, slice_output=False,
                                        name="second")(_stem(x, r), r),
            r"'second' \(SlicedConv2D\) has slice_input=False.*'stem'",
        ),
        (
            "reshape to a fixed channel count",
            lambda x, r: _head(K.GlobalAveragePooling1D()(K.Reshape((36, 16), name="rs")(_stem(x, r))), r),
            r"'rs' \(Reshape\).*Reshape\(\(36, -1\)\)",
        ),
        (
            "permute moving the channels",
            lambda x, r: _head(K.GlobalAveragePooling2D()(K.Permute((3, 1, 2), name="perm")(_stem(x, r))), r),
            r"'perm' \(Permute\) moves the last axis",
        ),
        (
            "unknown layer",
            lambda x, r: _head(K.GlobalAveragePooling2D()(K.Lambda(lambda v: v[..., ::-1], name="flip")(_stem(x, r))), r),
            r"'flip' \(Lambda\).*follows_input_width = True",
        ),
        (
            "channels_first pooling",
            lambda x, r: _head(K.GlobalAveragePooling2D(data_format="channels_first", name="gap")(_stem(x, r)), r),
            r"'gap'.*channels_first",
        ),
    ],
)
def test_wrong_construction_is_refused_naming_path_and_fix(name, build, message):
    with pytest.raises(ValueError, match=message):
        check_model(_model(build))


def test_nested_model_with_a_fixed_input_width_reading_a_sliced_tensor_is_refused():
    ix = keras.Input((6, 6, 16))
    ir = keras_slicing.rate_input()
    inner = keras.Model([ix, ir], L.SlicedConv2D(16, 1)(ix, ir), name="inner")
    model = _model(lambda x, r: _head(K.GlobalAveragePooling2D()(inner([_stem(x, r), r])), r))
    with pytest.raises(ValueError, match=r"Nested model 'inner'.*\(None, 6, 6, 16\).*'stem'"):
        check_model(model)


def test_slicing_model_refuses_before_training():
    x = keras.Input((6, 6, 3))
    r = keras_slicing.rate_input()
    h = K.Concatenate(name="cat")([_stem(x, r), x])
    y = _head(K.GlobalAveragePooling2D()(h), r)
    with pytest.raises(ValueError, match=r"'cat' \(Concatenate\)"):
        keras_slicing.SlicingModel([x, r], y)


def test_export_refuses_a_sliced_output_before_converting(tmp_path):
    model = _model(lambda x, r: L.SlicedDense(8, name="logits")(
        K.GlobalAveragePooling2D()(_stem(x, r)), r))
    with pytest.raises(ValueError, match="'logits'.*slice_output=False"):
        keras_slicing.export_tflite(model, tmp_path / "bundle", rates=[1.0, 0.5])
    assert not (tmp_path / "bundle").exists()


def _accepted():
    def residual(x, r):
        h = _stem(x, r)
        skip = h
        h = L.SlicedDepthwiseConv2D(3, padding="same")(h, r)
        h = L.SlicedBatchNormalization()(h, r)
        h = keras.ops.relu(h)
        h = L.SlicedConv2D(16, 1)(h, r)
        h = K.Add()([h, skip]) * 0.5
        gate = K.Reshape((1, 1, -1))(K.GlobalAveragePooling2D()(h))
        h = K.Multiply()([h, K.Activation("sigmoid")(gate)])
        h = K.Multiply()([h, K.Conv2D(1, 1)(x)])  # a one-channel mask broadcasts
        h = K.Concatenate()([K.Conv2D(4, 1)(x), h])
        h = L.SlicedConv2D(16, 3, strides=2)(h, r)
        return _head(L.SlicedFlatten()(K.Dropout(0.1)(h)), r)

    def sequence(x, r):
        h = K.Reshape((36, 3))(x)
        h = L.SlicedDense(16, slice_input=False)(h, r)
        h = K.LayerNormalization(center=False, scale=False)(h)
        h = K.GlobalAveragePooling1D()(h)
        return _head(h, r)

    def declared(x, r):
        flip = K.Lambda(lambda v: v * 2.0)
        flip.follows_input_width = True
        return _head(K.GlobalMaxPooling2D()(flip(_stem(x, r))), r)

    def restored(x, r):
        h = L.SlicedConv2D(16, 3, slice_input=False, slice_output=False)(x, r)
        return K.Dense(3)(K.Flatten()(h))  # nothing is sliced after the stem

    def nested(x, r):
        ix = keras.Input((6, 6, 3))
        ir = keras_slicing.rate_input()
        inner = keras.Model([ix, ir], _stem(ix, ir), name="inner")
        shared = L.SlicedConv2D(16, 1, name="shared")
        h = shared(shared(inner([x, r]), r), r)
        return _head(K.GlobalAveragePooling2D()(h), r)

    def joined(x, r):
        a = _stem(x, r)
        b = L.SlicedConv2D(8, 1, slice_input=False, name="side")(x, r)
        h = L.SlicedConcatenate(name="cat")([a, b], r)
        h = L.SlicedBatchNormalization()(h, r)
        h = L.SlicedConcatenate()([h, L.SlicedConv2D(8, 1)(h, r)], r)
        return _head(K.GlobalAveragePooling2D()(h), r)

    return {"residual": residual, "sequence": sequence, "declared": declared,
            "restored": restored, "nested": nested, "joined": joined}


@pytest.mark.parametrize("name", sorted(_accepted()))
def test_right_construction_is_accepted_and_matches_its_extracted_width(name):
    model = _model(_accepted()[name])
    assert check_model(model) is model
    images = np.random.default_rng(0).random((2, 6, 6, 3)).astype("float32")
    plain = keras_slicing.extract_submodel(model, 0.5)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(plain(images)),
        keras.ops.convert_to_numpy(model([images, np.full(2, 0.5, "float32")])),
        atol=1e-5,
    )


def test_sliced_output_is_allowed_on_request():
    model = _model(lambda x, r: K.GlobalAveragePooling2D()(_stem(x, r)))
    with pytest.raises(ValueError, match="slice_output=False"):
        check_model(model)
    assert check_model(model, allow_sliced_outputs=True) is model
    plain = keras_slicing.extract_submodel(model, 0.5)  # a narrow feature extractor
    assert plain.output.shape == (None, 8)


# The first call of a model built from sliced layers runs check_model on it.

_IMAGES = np.random.default_rng(0).random((4, 6, 6, 3)).astype("float32")
_HALF = np.full(4, 0.5, "float32")


def _message(fn):
    with pytest.raises(ValueError) as error:
        fn()
    return str(error.value)


_FLATTENED = {
    "batch_norm": lambda h, r: L.SlicedBatchNormalization(name="bn")(h, r),
    "group_norm": lambda h, r: L.SlicedGroupNormalization(groups=8, name="gn")(h, r),
    "depthwise": lambda h, r: L.SlicedDepthwiseConv2D(3, padding="same", name="dw")(h, r),
    "dropout": lambda h, r: K.Dropout(0.2, name="drop")(h),
    "batch_norm_relu": lambda h, r: K.ReLU()(L.SlicedBatchNormalization(name="bn")(h, r)),
}


@pytest.mark.parametrize("before", sorted(_FLATTENED))
def test_plain_model_call_refuses_a_flatten_as_check_model_does(before):
    model = _model(lambda x, r: _head(K.Flatten(name="flat")(_FLATTENED[before](_stem(x, r), r)), r))
    expected = _message(lambda: check_model(model))
    assert _message(lambda: model([_IMAGES, _HALF])) == expected


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda x, r: L.SlicedDense(8, name="logits")(
            K.GlobalAveragePooling2D()(_stem(x, r)), r), id="forgotten slice_output=False"),
        pytest.param(lambda x, r: K.Dense(4, name="plain")(
            K.GlobalAveragePooling2D()(_stem(x, r))), id="plain Dense after a sliced layer"),
    ],
)
@pytest.mark.parametrize("entry", ["predict", "__call__"])
def test_plain_model_refuses_before_returning_a_result(build, entry):
    model = _model(build)
    expected = _message(lambda: check_model(model))
    run = {
        "predict": lambda: model.predict([_IMAGES, _HALF], verbose=0),
        "__call__": lambda: model([_IMAGES, _HALF]),
    }[entry]
    assert _message(run) == expected


def test_model_around_a_nested_model_is_checked_as_a_whole():
    ix = keras.Input((6, 6, 3))
    ir = keras_slicing.rate_input()
    inner = keras.Model([ix, ir], K.GlobalAveragePooling2D()(_stem(ix, ir)), name="inner")
    model = _model(lambda x, r: K.Dense(4, name="plain")(inner([x, r])))
    expected = _message(lambda: check_model(model))
    assert "'plain' (Dense)" in expected
    assert _message(lambda: model([_IMAGES, _HALF])) == expected


def test_sequential_after_a_sliced_layer_is_refused_at_the_first_call():
    head = keras.Sequential([keras.Input((16,)), K.Dense(4)], name="seq")
    model = _model(lambda x, r: head(K.GlobalAveragePooling2D()(_stem(x, r))))
    expected = _message(lambda: check_model(model))
    assert "'seq' (Sequential)" in expected
    assert _message(lambda: model.predict([_IMAGES, _HALF], verbose=0)) == expected


def test_sequential_of_sliced_layers_runs_at_full_width():
    # Without a rate input every sliced layer runs at full width: a plain
    # model with the same weights computes the same outputs.
    sliced = keras.Sequential([keras.Input((5,)), L.SlicedDense(8, slice_input=False),
                               L.SlicedDense(3, slice_output=False)])
    plain = keras.Sequential([keras.Input((5,)), K.Dense(8), K.Dense(3)])
    plain.set_weights(sliced.get_weights())
    x = np.random.default_rng(2).random((4, 5)).astype("float32")
    np.testing.assert_allclose(sliced.predict(x, verbose=0), plain.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)


def test_sliced_layer_without_a_rate_in_a_model_with_a_rate_input_is_refused():
    model = _model(lambda x, r: L.SlicedDense(4, slice_output=False, name="late")(
        K.GlobalAveragePooling2D()(_stem(x, r))))
    expected = _message(lambda: check_model(model))
    assert "'late' (SlicedDense) is called without a rate" in expected
    assert "'slice_rate'" in expected
    assert _message(lambda: model([_IMAGES, _HALF])) == expected


def test_feature_extractor_runs_once_declared_to_check_model():
    model = _model(lambda x, r: K.GlobalAveragePooling2D()(_stem(x, r)))
    check_model(model, allow_sliced_outputs=True)
    assert model([_IMAGES, _HALF]).shape == (4, 8)
