"""slice_model on nested models, pinned layers, unknown layers and merges."""

import keras
import numpy as np
import pytest

import keras_slicing
from tests.conversion import plain_models

K = keras.layers
L = keras_slicing.layers


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _check_full_width(plain, sliced, shape):
    x = np.random.default_rng(0).random((3, *shape)).astype("float32")
    np.testing.assert_allclose(_numpy(sliced(x)), _numpy(plain(x)), atol=1e-5)
    for rate in sliced.rates[1:]:
        assert sliced.at_rate(rate)(x).shape == plain(x).shape


def test_nested_sequential_and_functional_models_are_inlined():
    block = keras.Sequential(
        [keras.Input((16,)), K.Dense(32, activation="relu", name="inner")], name="block"
    )
    x = keras.Input((8,))
    h = K.Dense(16, name="first")(x)
    inner_in = keras.Input((32,))
    head = keras.Model(inner_in, K.Dense(3, name="last")(inner_in), name="head")
    plain = plain_models.randomize(keras.Model(x, head(block(h))))
    sliced = keras_slicing.slice_model(plain)
    assert not any(isinstance(layer, keras.Model) for layer in sliced.layers)
    assert sliced.get_layer("inner").slice_input and sliced.get_layer("inner").slice_output
    _check_full_width(plain, sliced, (8,))


def test_clashing_names_in_nested_models_get_the_model_prefix():
    def block(name):
        inputs = keras.Input((16,))
        return keras.Model(inputs, K.Dense(16, name="dense")(inputs), name=name)

    x = keras.Input((16,))
    plain = plain_models.randomize(keras.Model(x, K.Dense(2, name="out")(block("b2")(block("b1")(x)))))
    sliced = keras_slicing.slice_model(plain)
    names = [layer.name for layer in sliced.layers]
    assert "dense" in names and "b2_dense" in names
    _check_full_width(plain, sliced, (16,))


def test_shared_layer_keeps_one_set_of_weights():
    x = keras.Input((16,))
    shared = K.Dense(16, activation="tanh", name="shared")
    h = K.Dense(16, name="first")(x)
    plain = plain_models.randomize(keras.Model(x, K.Dense(2, name="out")(shared(shared(h)))))
    sliced = keras_slicing.slice_model(plain, rewire=None)
    assert len(sliced.get_layer("shared").weights) == 2
    _check_full_width(plain, sliced, (16,))


def test_keep_full_pins_a_layer_and_what_it_reads_and_writes():
    x = keras.Input((8,))
    h = x
    for name in ("fc1", "fc2", "fc3"):
        h = K.Dense(16, activation="relu", name=name)(h)
    plain = plain_models.randomize(keras.Model(x, K.Dense(2, name="out")(h)))
    sliced = keras_slicing.slice_model(plain, keep_full=["fc2"])
    assert type(sliced.get_layer("fc2")) is K.Dense
    assert type(sliced.get_layer("fc1")) is K.Dense
    assert "keep_full" in sliced.slicing_plan.row("fc2").reason
    assert sliced.slicing_plan.row("fc3").status == "sliced output"
    _check_full_width(plain, sliced, (8,))


def test_unknown_layer_keeps_its_inputs_full_and_names_itself():
    class Twice(K.Layer):
        def call(self, x):
            return ops_twice(x)

    def ops_twice(x):
        return x * 2.0

    x = keras.Input((8,))
    h = K.Dense(16, name="fc1")(x)
    h = Twice(name="twice")(h)
    h = K.Dense(16, name="fc2")(h)
    plain = plain_models.randomize(keras.Model(x, K.Dense(2, name="out")(h)))
    sliced = keras_slicing.slice_model(plain)
    plan = sliced.slicing_plan
    assert plan.row("fc1").status == "full"
    assert "'twice' (Twice)" in plan.row("fc1").reason
    assert plan.row("fc2").status == "sliced output"
    _check_full_width(plain, sliced, (8,))


def test_layer_declaring_follows_input_width_passes_the_slicing_on():
    class Twice(K.Layer):
        follows_input_width = True

        def call(self, x):
            return x * 2.0

    x = keras.Input((8,))
    h = Twice()(K.Dense(16, name="fc1")(x))
    plain = plain_models.randomize(keras.Model(x, K.Dense(2, name="out")(h)))
    sliced = keras_slicing.slice_model(plain)
    assert sliced.slicing_plan.row("fc1").status == "sliced output"


@pytest.mark.parametrize("merge", ["Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"])
def test_merge_layers_unite_the_groups_of_their_inputs(merge):
    x = keras.Input((8,))
    a = K.Dense(16, name="a")(x)
    b = K.Dense(16, name="b")(x)
    h = getattr(K, merge)(name="merge")([a, b])
    plain = plain_models.randomize(keras.Model(x, K.Dense(2, name="out")(h)))
    sliced = keras_slicing.slice_model(plain)
    assert sliced.get_layer("a").slice_output and sliced.get_layer("b").slice_output
    _check_full_width(plain, sliced, (8,))


def test_inception_resnet_scaled_residual_is_a_merge():
    # InceptionResNetV2's `x + scale * branch` layer (no public class).
    from keras_slicing.keras_internals import CustomScaleLayer

    x = keras.Input((8,))
    a = K.Dense(16, name="a")(x)
    b = K.Dense(16, name="b")(a)
    h = CustomScaleLayer(0.2, name="scaled_residual")([a, b])
    plain = plain_models.randomize(keras.Model(x, K.Dense(2, name="out")(h)))
    sliced = keras_slicing.slice_model(plain)
    assert sliced.get_layer("a").slice_output and sliced.get_layer("b").slice_output
    _check_full_width(plain, sliced, (8,))
    features = np.random.default_rng(1).random((3, 8)).astype("float32")
    cut = keras_slicing.extract_submodel(sliced, 0.5)
    np.testing.assert_allclose(
        _numpy(cut(features)), _numpy(sliced.at_rate(0.5)(features)), atol=1e-5
    )


def test_merge_with_a_full_width_input_keeps_the_whole_group_full():
    x = keras.Input((16,))
    h = K.Dense(16, name="fc1")(x)
    plain = plain_models.randomize(keras.Model(x, K.Dense(2, name="out")(K.Add()([h, x]))))
    with pytest.raises(ValueError, match="nothing.*can be sliced.*model input"):
        keras_slicing.slice_model(plain)


def test_merge_with_a_constant_per_channel_keeps_the_group_full():
    x = keras.Input((8,))
    h = K.Dense(16, name="fc1")(x) * np.arange(16, dtype="float32")
    h = K.Dense(16, name="fc2")(h)
    plain = plain_models.randomize(keras.Model(x, K.Dense(2, name="out")(h)))
    sliced = keras_slicing.slice_model(plain)
    assert "constant of 16 channels" in sliced.slicing_plan.row("fc1").reason
    _check_full_width(plain, sliced, (8,))


def test_reshape_of_a_sliced_vector_takes_the_channel_count_from_the_rate():
    x = keras.Input((6, 6, 3))
    h = K.Conv2D(16, 3, padding="same", name="conv")(x)
    gate = K.Reshape((1, 1, 16), name="to_map")(K.GlobalAveragePooling2D()(h))
    h = K.Multiply()([h, K.Activation("sigmoid")(gate)])
    plain = plain_models.randomize(keras.Model(x, K.Dense(2, name="out")(K.GlobalMaxPooling2D()(h))))
    sliced = keras_slicing.slice_model(plain)
    assert tuple(sliced.get_layer("to_map").target_shape) == (1, 1, -1)
    _check_full_width(plain, sliced, (6, 6, 3))


def test_group_norm_groups_not_a_multiple_of_slice_groups_stay_full():
    x = keras.Input((6, 6, 3))
    h = K.GroupNormalization(4, name="gn")(K.Conv2D(16, 3, name="conv")(x))
    plain = plain_models.randomize(keras.Model(x, K.Dense(2, name="out")(K.GlobalAveragePooling2D()(h))))
    with pytest.raises(ValueError, match="groups=4, not a multiple of slice_groups=8"):
        keras_slicing.slice_model(plain)
    sliced = keras_slicing.slice_model(plain, slice_groups=4)
    assert sliced.slicing_plan.row("gn").status == "sliced"


def test_depthwise_multiplier_and_conv1d_convert():
    x = keras.Input((6, 6, 3))
    h = K.Conv2D(8, 1, name="pw")(x)
    h = K.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(h)
    h = K.Conv2D(16, 1, name="pw2")(h)
    h = K.Reshape((-1, 16))(h)
    h = K.Conv1D(16, 3, padding="causal", name="c1d")(h)
    plain = plain_models.randomize(keras.Model(x, K.Dense(2, name="out")(K.GlobalAveragePooling1D()(h))))
    for rewire in (None, "l1"):
        sliced = keras_slicing.slice_model(plain, rewire=rewire)
        assert sliced.slicing_plan.row("dw").status == "sliced"
        _check_full_width(plain, sliced, (6, 6, 3))
