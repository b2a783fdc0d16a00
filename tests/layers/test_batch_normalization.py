import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_slicing.layers import SlicedBatchNormalization
from tests.layers import harness


def _built_layer(rates=(1.0, 0.5, 0.25), channels=16, **kwargs):
    layer = SlicedBatchNormalization(rates=rates, momentum=0.5, **kwargs)
    layer.build((None, 3, 3, channels))
    return layer


def _set_stats(layer):
    rng = np.random.default_rng(0)
    gamma, beta, mean, variance = layer.get_weights()
    layer.set_weights(
        [
            rng.normal(size=gamma.shape),
            rng.normal(size=beta.shape),
            rng.normal(size=mean.shape),
            rng.uniform(0.5, 2.0, size=variance.shape),
        ]
    )


def _layer_with_statistics():
    layer = _built_layer()
    _set_stats(layer)
    return layer


def _inputs_at(rate):
    n = int(16 * rate)
    return (np.random.default_rng(1).normal(size=(4, 3, 3, n)).astype("float32"),)


def _full_width_weights(layer):
    """A plain layer's weights: the statistics of rate 1 (row 0)."""
    gamma, beta, mean, variance = layer.get_weights()
    return [gamma, beta, mean[0], variance[0]]


# Each rate reads its own row of statistics, so a width's weights are not
# leading blocks of the sliced ones.
CASE = harness.LayerCase(
    _layer_with_statistics, _inputs_at, keras.layers.BatchNormalization,
    full_weights=_full_width_weights, call_kwargs={"training": False},
    rates=(1.0, 0.5, 0.25), leading_blocks=False,
)


@pytest.mark.parametrize("check", harness.CHECKS, ids=harness.check_id)
def test_sliced_layer_contract(check, tmp_path):
    check(CASE, tmp_path)


def test_each_rate_reads_its_own_row_of_statistics():
    layer = _layer_with_statistics()
    gamma, beta, mean, variance = layer.get_weights()
    for row, rate in enumerate((1.0, 0.5, 0.25)):
        (x,) = _inputs_at(rate)
        n = x.shape[-1]
        want = (x - mean[row, :n]) / np.sqrt(variance[row, :n] + 1e-3) * gamma[:n] + beta[:n]
        np.testing.assert_allclose(layer(x, rate), want, atol=1e-5)


def test_training_updates_only_the_active_rows_prefix():
    layer = _built_layer()
    _set_stats(layer)
    before = [w.copy() for w in layer.get_weights()[2:]]
    x = np.random.default_rng(2).normal(3.0, 2.0, size=(8, 3, 3, 8)).astype("float32")
    run = tf.function(lambda x, r: layer(x, r, training=True))
    run(x, tf.fill([8], 0.5))
    for old, new, batch_stat in zip(
        before, layer.get_weights()[2:], [x.mean((0, 1, 2)), x.var((0, 1, 2))]
    ):
        np.testing.assert_allclose(new[1, :8], 0.5 * old[1, :8] + 0.5 * batch_stat, rtol=1e-4)
        np.testing.assert_array_equal(new[1, 8:], old[1, 8:])
        np.testing.assert_array_equal(new[[0, 2]], old[[0, 2]])


def test_training_normalizes_with_batch_statistics():
    layer = _built_layer(center=False, scale=False)
    x = np.random.default_rng(3).normal(5.0, 2.0, size=(16, 3, 3, 4)).astype("float32")
    y = keras.ops.convert_to_numpy(layer(x, 0.25, training=True))
    np.testing.assert_allclose(y.mean((0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(y.std((0, 1, 2)), 1.0, atol=1e-3)


def test_undeclared_rate_lists_the_declared_rates():
    layer = _built_layer()
    with pytest.raises(ValueError, match=r"rate=0.75.*Declared rates: \[1, 0.5, 0.25\]"):
        layer(np.ones((1, 3, 3, 12), "float32"), 0.75)


def test_undeclared_tensor_rate_fails_in_graph_with_declared_rates():
    layer = _built_layer()
    run = tf.function(lambda x, r: layer(x, r))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"Declared rates: \[1, 0.5, 0.25\]"):
        run(tf.ones((1, 3, 3, 12)), tf.fill([1], 0.75))


def test_rates_with_the_same_width_share_statistics():
    layer = _built_layer()
    assert layer.row_of(0.2) == layer.row_of(0.25)


def test_declaring_two_rates_of_the_same_width_is_rejected():
    with pytest.raises(ValueError, match="same width"):
        SlicedBatchNormalization(rates=[0.3, 0.26])


def test_default_declares_every_width():
    layer = SlicedBatchNormalization(slice_groups=4)
    assert layer.declared_rates == (1.0, 0.75, 0.5, 0.25)


def test_renorm_is_rejected():
    with pytest.raises(ValueError, match="renorm"):
        SlicedBatchNormalization(renorm=True)


def test_config_round_trip_keeps_rates():
    layer = _built_layer()
    clone = SlicedBatchNormalization.from_config(layer.get_config())
    assert clone.declared_rates == (1.0, 0.5, 0.25)
