"""slice_model on channel concatenations: sliced group by group, or kept full."""

import keras
import numpy as np
import pytest

import keras_slicing
from tests.conversion import plain_models

K = keras.layers
G = 4


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _images(n=3, seed=0):
    return np.random.default_rng(seed).random((n, 6, 6, 3)).astype("float32")


def dense_block(growth=4, layers=3):
    """A DenseNet-like block: each layer's output joins all before it."""
    x = keras.Input((6, 6, 3))
    h = K.Conv2D(8, 3, padding="same", name="stem")(x)
    for i in range(layers):
        y = K.BatchNormalization(name=f"bn{i}")(h)
        y = K.ReLU(name=f"relu{i}")(y)
        y = K.Conv2D(growth, 3, padding="same", name=f"conv{i}")(y)
        h = K.Concatenate(name=f"join{i}")([h, y])
    h = K.BatchNormalization(name="bn_out")(h)
    h = K.Conv2D(8, 1, name="transition")(h)
    y = K.Dense(2, name="logits")(K.GlobalAveragePooling2D()(h))
    return plain_models.randomize(keras.Model(x, y))


def two_branches():
    """Branches of different widths joined, normalized and read by a conv."""
    x = keras.Input((6, 6, 3))
    a = K.Conv2D(8, 3, padding="same", name="a")(x)
    b = K.Conv2D(4, 1, name="b")(x)
    h = K.Concatenate(name="join")([a, b])
    h = K.BatchNormalization(name="bn")(h)
    h = K.ReLU()(h)
    c = K.Conv2D(4, 1, name="c")(h)
    h = K.Concatenate(name="join2")([h, c])
    y = K.Dense(2, name="logits")(K.GlobalAveragePooling2D()(h))
    return plain_models.randomize(keras.Model(x, y))


def test_channel_concatenation_becomes_a_sliced_concatenate():
    sliced = keras_slicing.slice_model(two_branches(), slice_groups=G)
    plan = sliced.slicing_plan
    for name in ("join", "join2"):
        row = plan.row(name)
        assert (row.becomes, row.status) == ("SlicedConcatenate", "sliced")
    assert plan.row("a").status == plan.row("b").status == "sliced output"
    assert "SlicedConcatenate" in str(plan)
    keras_slicing.check_model(sliced)


@pytest.mark.parametrize("rewire", [None, "l1", "bn"])
def test_nested_joins_match_the_original_at_full_width(rewire):
    plain = dense_block()
    sliced = keras_slicing.slice_model(plain, slice_groups=G, rewire=rewire)
    assert {row.name for row in sliced.slicing_plan.rows if row.status == "full"} == set()
    x = _images()
    np.testing.assert_allclose(_numpy(sliced(x)), _numpy(plain(x)), atol=1e-5)


def test_taylor_rewiring_through_joins_matches_the_original_at_full_width():
    plain = dense_block()
    x = _images(8)
    data = (x, np.arange(8) % 2)
    sliced = keras_slicing.slice_model(plain, slice_groups=G, rewire="taylor", data=data)
    np.testing.assert_allclose(_numpy(sliced(x)), _numpy(plain(x)), atol=1e-5)


def test_rewiring_orders_the_channels_that_reach_a_join():
    """bn rewiring reads the batch norm after the join for the conv before it."""
    plain = dense_block(layers=1)
    conv = plain.get_layer("conv0")
    # Kernel columns of equal L1 norm: the batch norm's scale alone decides.
    conv.kernel.assign(np.sign(_numpy(conv.kernel)))
    conv.bias.assign(np.arange(4.0))  # names each output channel
    sliced = keras_slicing.slice_model(plain, slice_groups=G, rewire="bn")
    gamma = np.abs(_numpy(plain.get_layer("bn_out").gamma))[8:]  # conv0's channels
    np.testing.assert_array_equal(
        _numpy(sliced.get_layer("conv0").bias), np.argsort(-gamma, kind="stable"))


def _zeroed(plain, kept):
    """The original with the channels of each layer not in `kept[name]` zeroed.

    A zero channel (zero kernel column and bias, zero batch-norm scale and
    offset) adds nothing to the layers after it: the reference of a narrow
    width that shares no code with slice_model.
    """
    masked = keras.models.clone_model(plain)
    masked.set_weights(plain.get_weights())
    for name, channels in kept.items():
        for variable in masked.get_layer(name).weights:
            if variable.path.endswith(("kernel", "bias", "gamma", "beta")):
                value = _numpy(variable).copy()
                dropped = np.setdiff1d(np.arange(value.shape[-1]), channels)
                value[..., dropped] = 0.0
                variable.assign(value)
    return masked


@pytest.mark.parametrize("rate", [0.75, 0.5, 0.25])
def test_narrow_width_equals_the_original_with_the_dropped_channels_zeroed(rate):
    plain = two_branches()
    sliced = keras_slicing.slice_model(plain, slice_groups=G, rewire=None)
    k = round(rate * G)
    a, b, c = np.arange(2 * k), np.arange(k), np.arange(k)
    kept = {"a": a, "b": b, "c": c, "bn": np.concatenate([a, 8 + b])}
    x = _images()
    want = _numpy(_zeroed(plain, kept)(x))
    np.testing.assert_allclose(_numpy(sliced.at_rate(rate)(x)), want, atol=1e-5)


def test_ops_concatenate_is_sliced_too():
    x = keras.Input((6, 6, 3))
    a = K.Conv2D(8, 1, name="a")(x)
    b = K.Conv2D(4, 1, name="b")(x)
    h = K.Conv2D(8, 1, name="after")(keras.ops.concatenate([a, b], axis=-1))
    plain = plain_models.randomize(
        keras.Model(x, K.Dense(2, name="logits")(K.GlobalAveragePooling2D()(h))))
    sliced = keras_slicing.slice_model(plain, slice_groups=G)
    assert sliced.slicing_plan.row("a").status == "sliced output"
    assert any(row.becomes == "SlicedConcatenate" for row in sliced.slicing_plan.rows)
    np.testing.assert_allclose(_numpy(sliced(_images())), _numpy(plain(_images())), atol=1e-5)


def _joined_then(build, head=True):
    x = keras.Input((6, 6, 3))
    a = K.Conv2D(8, 1, name="a")(x)
    b = K.Conv2D(4, 1, name="b")(x)
    h = build(x, a, b)
    if head:
        h = K.Dense(2, name="logits")(K.GlobalAveragePooling2D()(h))
    # A branch that is sliced whatever becomes of the join.
    side = K.Dense(2, name="side_out")(K.GlobalAveragePooling2D()(K.Conv2D(8, 1)(x)))
    return plain_models.randomize(keras.Model(x, [h, side]))


@pytest.mark.parametrize(
    "build, head, reason",
    [
        (lambda x, a, b: K.Concatenate(name="join")([a, b]), False, "model output"),
        (lambda x, a, b: K.Concatenate(name="join")([a, b, x]), True, "model input"),
        (lambda x, a, b: K.GroupNormalization(4, name="gn")(
            K.Concatenate(name="join")([a, b])), True, "'gn' normalizes groups"),
        (lambda x, a, b: K.Add()([
            K.Concatenate(name="join")([a, b]), K.Concatenate(name="other")([b, a])]),
         True, "several concatenations"),
    ],
    ids=["output", "data input", "group norm", "two joins added"],
)
def test_join_that_cannot_be_sliced_keeps_all_its_inputs_full(build, head, reason):
    plain = _joined_then(build, head)
    sliced = keras_slicing.slice_model(plain, slice_groups=G)
    plan = sliced.slicing_plan
    assert plan.row("join").status == "full"
    assert plan.row("a").status == plan.row("b").status == "full"
    assert reason in plan.row("a").reason
    x = _images()
    for have, want in zip(sliced(x), plain(x)):
        np.testing.assert_allclose(_numpy(have), _numpy(want), atol=1e-5)
