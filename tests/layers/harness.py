"""The checks every sliced layer passes, in the manner of Keras' `run_layer_test`.

A layer's test file describes its layer once, as a `LayerCase`, and runs
every check on it:

    CASE = harness.LayerCase(make_layer, inputs_at, keras.layers.Dense)

    @pytest.mark.parametrize("check", harness.CHECKS, ids=harness.check_id)
    def test_sliced_layer_contract(check, tmp_path):
        check(CASE, tmp_path)

Each check is one behaviour: the config round trip, full width equal to the
plain Keras layer holding the same weights, every rate equal to the plain
layer of that width built from the sliced weights (the layer's
`plain_layer`, what `extract_submodel` uses), a rate tensor in a traced
function equal to the Python rate, and a model holding the layer surviving a
`.keras` file.
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

import keras_slicing

RATES = (1.0, 0.75, 0.5, 0.25)

# The sliced layers' own arguments: a plain layer's config lacks them.
_SLICING_KEYS = ("slice_groups", "slice_input", "slice_output", "rates")


@dataclasses.dataclass
class LayerCase:
    """One sliced layer under test.

    Attributes:
        make_layer: `() -> layer`, a fresh sliced layer with non-trivial
            weights, built or not (the checks call it on full-width inputs).
        inputs_at: `(rate) -> tuple of numpy arrays`, the layer's tensor
            inputs as they arrive at `rate` (narrower where a sliced layer
            feeds it).
        plain_class: The Keras layer class the sliced layer extends.
        full_weights: `(layer) -> weights` of `plain_class` at full width;
            defaults to `layer.get_weights()`.
        call_kwargs: Extra call arguments (e.g. `training=False`).
        rates: The rates checked.
        atol: Absolute tolerance of the comparisons with plain layers.
        leading_blocks: Whether `plain_layer`'s weights are leading blocks
            of the sliced weights (false where a width takes blocks from
            inside them, e.g. the gates of a recurrent kernel).
    """

    make_layer: object
    inputs_at: object
    plain_class: type
    full_weights: object = None
    call_kwargs: dict = dataclasses.field(default_factory=dict)
    rates: tuple = RATES
    atol: float = 1e-5
    leading_blocks: bool = True

    def built_layer(self):
        layer = self.make_layer()
        self.call(layer, self.inputs_at(1.0), 1.0)
        return layer

    def call(self, layer, inputs, rate):
        return keras.ops.convert_to_numpy(
            layer(*inputs, rate=rate, **self.call_kwargs)
        )


def check_config_round_trip(case, tmp_path):
    layer = case.built_layer()
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    case.call(clone, case.inputs_at(1.0), 1.0)
    clone.set_weights(layer.get_weights())
    narrow = case.rates[-1]
    inputs = case.inputs_at(narrow)
    np.testing.assert_array_equal(
        case.call(clone, inputs, narrow), case.call(layer, inputs, narrow)
    )


def check_full_rate_matches_plain_layer(case, tmp_path):
    layer = case.built_layer()
    config = {
        k: v for k, v in layer.get_config().items() if k not in _SLICING_KEYS
    }
    plain = case.plain_class.from_config(config)
    inputs = case.inputs_at(1.0)
    plain(*inputs, **case.call_kwargs)
    plain.set_weights(
        case.full_weights(layer) if case.full_weights else layer.get_weights()
    )
    np.testing.assert_allclose(
        case.call(layer, inputs, 1.0),
        keras.ops.convert_to_numpy(plain(*inputs, **case.call_kwargs)),
        rtol=1e-6, atol=case.atol,
    )


def check_rates_match_plain_layer_of_their_width(case, tmp_path):
    layer = case.built_layer()
    for rate in case.rates:
        inputs = case.inputs_at(rate)
        shapes = [tuple(x.shape) for x in inputs]
        plain, weights = layer.plain_layer(rate, shapes, f"plain_{rate}")
        assert isinstance(plain, case.plain_class)
        if case.leading_blocks:
            for block, full in zip(weights, layer.get_weights()):
                corner = full[tuple(slice(0, size) for size in block.shape)]
                np.testing.assert_array_equal(block, corner)
        plain(*inputs, **case.call_kwargs)
        plain.set_weights(weights)
        np.testing.assert_allclose(
            case.call(layer, inputs, rate),
            keras.ops.convert_to_numpy(plain(*inputs, **case.call_kwargs)),
            rtol=1e-5, atol=case.atol, err_msg=f"rate={rate}",
        )


def check_tensor_rate_in_graph_matches_python_rate(case, tmp_path):
    layer = case.built_layer()
    run = tf.function(
        lambda inputs, rate: layer(*inputs, rate=rate, **case.call_kwargs)
    )
    for rate in case.rates:
        inputs = case.inputs_at(rate)
        rates = tf.fill([len(inputs[0])], rate)
        np.testing.assert_allclose(
            run(inputs, rates), case.call(layer, inputs, rate),
            rtol=1e-6, atol=1e-6, err_msg=f"rate={rate}",
        )


def check_keras_file_round_trip(case, tmp_path):
    layer = case.built_layer()
    full = case.inputs_at(1.0)
    symbolic = [keras.Input(x.shape[1:], dtype=x.dtype) for x in full]
    rate = keras_slicing.rate_input()
    model = keras.Model(
        [*symbolic, rate], layer(*symbolic, rate=rate, **case.call_kwargs)
    )
    model.save(tmp_path / "layer.keras")
    restored = keras.saving.load_model(tmp_path / "layer.keras")
    for one in (model, restored):  # a lone layer's output may be sliced
        keras_slicing.check_model(one, allow_sliced_outputs=True)
    assert type(restored.layers[-1]) is type(layer)
    narrow = case.rates[-1]
    feed = [*full, np.full(len(full[0]), narrow, "float32")]
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(restored(feed)),
        keras.ops.convert_to_numpy(model(feed)),
    )


CHECKS = (
    check_config_round_trip,
    check_full_rate_matches_plain_layer,
    check_rates_match_plain_layer_of_their_width,
    check_tensor_rate_in_graph_matches_python_rate,
    check_keras_file_round_trip,
)


def check_id(check):
    return check.__name__.removeprefix("check_")
