"""Backend-neutral checks of keras-slicing, run in a fresh interpreter.

`KERAS_BACKEND=jax python -m tests.backends.checks OUT_DIR TF_DIR` runs every
check on the active backend and writes `OUT_DIR/results.json`, mapping each
check to "ok" or its traceback, plus what the TensorFlow side compares: a
saved `.keras` model with its outputs, and model costs. `TF_DIR` holds a
`.keras` model saved on TensorFlow with its outputs, loaded here.

References are independent of the code under test: plain Keras layers on the
active slice, numpy, and files written by the TensorFlow backend.
"""

import json
import pathlib
import sys
import time
import traceback

import keras
import numpy as np
from keras import ops

import keras_slicing
from keras_slicing import layers
from keras_slicing.layers.base import SlicedLayerMixin
from keras_slicing.rates import active_width
from tests.sliced_models import masked_reference
from tests.sliced_models import randomize_weights
from tests.sliced_models import small_cnn
from tests.sliced_models import small_mlp

RATES = (1.0, 0.5, 0.25)
BACKEND = keras.backend.backend()
CHECKS = []


# Checks of one backend's own feature, by name: reported as not run elsewhere.
BACKEND_ONLY = {}


def check(fn=None, *, backend=None):
    def register(fn):
        CHECKS.append(fn)
        if backend is not None:
            BACKEND_ONLY[fn.__name__] = backend
        return fn

    return register if fn is None else register(fn)


def _close(got, want, atol=1e-5):
    np.testing.assert_allclose(
        ops.convert_to_numpy(got), ops.convert_to_numpy(want), rtol=1e-5, atol=atol
    )


def _randomize(layer, seed):
    rng = np.random.default_rng(seed)
    layer.set_weights(
        [np.abs(rng.normal(1.0, 0.3, w.shape)) if "variance" in v.path
         else rng.normal(0.0, 0.5, w.shape)
         for v, w in zip(layer.weights, layer.get_weights())]
    )


def _rate_tensor(rate, batch):
    return ops.convert_to_tensor(np.full((batch,), rate, "float32"))


def _both_rates(layer, x, rate, **kwargs):
    """The layer at a Python rate and at an equal-valued backend tensor rate."""
    by_float = layer(x, rate, **kwargs)
    _close(layer(x, _rate_tensor(rate, x.shape[0]), **kwargs), by_float, atol=0)
    return by_float


@check
def imports_without_tensorflow():
    assert "tensorflow" not in sys.modules, "import keras_slicing imported TensorFlow"


@check
def dense_matches_plain_dense():
    layer = layers.SlicedDense(16, slice_groups=4, activation="relu")
    layer.build((None, 8))
    _randomize(layer, 1)
    kernel, bias = layer.get_weights()
    for rate in RATES:
        n_in, n_out = active_width(8, rate, 4), active_width(16, rate, 4)
        x = np.random.default_rng(2).normal(size=(3, n_in)).astype("float32")
        plain = keras.layers.Dense(n_out, activation="relu")
        plain.build((None, n_in))
        plain.set_weights([kernel[:n_in, :n_out], bias[:n_out]])
        _close(_both_rates(layer, x, rate), plain(x))


@check
def conv2d_matches_plain_conv2d():
    layer = layers.SlicedConv2D(16, 3, slice_groups=4, padding="same")
    layer.build((None, 6, 6, 8))
    _randomize(layer, 3)
    kernel, bias = layer.get_weights()
    for rate in RATES:
        n_in, n_out = active_width(8, rate, 4), active_width(16, rate, 4)
        x = np.random.default_rng(4).normal(size=(2, 6, 6, n_in)).astype("float32")
        plain = keras.layers.Conv2D(n_out, 3, padding="same")
        plain.build((None, 6, 6, n_in))
        plain.set_weights([kernel[:, :, :n_in, :n_out], bias[:n_out]])
        _close(_both_rates(layer, x, rate), plain(x), atol=1e-4)


@check(backend="torch")
def convolutions_match_plain_keras_in_every_geometry():
    """Strides, "same"/"valid" on odd and even sizes, dilation, 1x1 kernels:
    the sliced convolutions equal Keras' own. PyTorch alone runs its own
    convolution (`backend.channels_last_conv`); the others run Keras'."""
    rng = np.random.default_rng(11)
    cases = [
        (kernel, stride, padding, dilation, size)
        for kernel in (1, 3) for stride in (1, 2) for padding in ("same", "valid")
        for dilation in (1, 2) for size in (7, 8)
        if stride == 1 or dilation == 1
    ]
    for sliced, plain, rank in (
        (layers.SlicedConv2D, keras.layers.Conv2D, 2),
        (layers.SlicedConv1D, keras.layers.Conv1D, 1),
    ):
        for kernel, stride, padding, dilation, size in cases:
            args = dict(strides=stride, padding=padding, dilation_rate=dilation)
            layer = sliced(8, kernel, slice_groups=4, **args)
            shape = (2,) + (size,) * rank + (8,)
            layer.build((None,) + shape[1:])
            _randomize(layer, 12)
            kernel_w, bias = layer.get_weights()
            twin = plain(4, kernel, **args)
            twin.build(shape[:-1] + (4,))
            twin.set_weights([kernel_w[..., :4, :4], bias[:4]])
            x = rng.normal(size=shape[:-1] + (4,)).astype("float32")
            try:
                _close(layer(x, 0.5), twin(x), atol=1e-4)
            except AssertionError as error:
                raise AssertionError(f"{sliced.__name__} {args} size={size}") from error


@check
def strided_pointwise_conv_trains_at_four_channels():
    """The shortcut of a sliced ResNet at r = 0.25: a strided 1x1 conv on 4
    channels. Its weight gradient crashed torch 2.13's CPU convolution."""
    inputs = keras.Input((8, 8, 3))
    rate = keras.Input((), name="rate")
    hidden = layers.SlicedConv2D(16, 3, padding="same", slice_groups=4, slice_input=False)
    shortcut = layers.SlicedConv2D(16, 1, strides=2, slice_groups=4, slice_output=False)
    h = hidden(inputs, rate)
    model = keras.Model([inputs, rate], shortcut(h, rate))
    model.compile(keras.optimizers.SGD(0.5), "mse")
    rng = np.random.default_rng(13)
    x = rng.normal(size=(8, 8, 8, 3)).astype("float32")
    rates = np.full(8, 0.25, "float32")
    target = rng.normal(size=(8, 4, 4, 16)).astype("float32")
    features = keras.Model([inputs, rate], h)  # narrow at r < 1, by design
    keras_slicing.check_model(features, allow_sliced_outputs=True)
    sub = features.predict([x, rates], verbose=0)[:, ::2, ::2]
    assert sub.shape[-1] == 4
    kernel, bias = [w.copy() for w in shortcut.get_weights()]
    model.train_on_batch([x, rates], target)
    # numpy: y = h[:, ::2, ::2] @ K[:4] + b, with the 4 active channels of h.
    error = sub @ kernel[0, 0, :4] + bias - target
    grad = 2 * np.einsum("bhwi,bhwo->io", sub, error) / target.size
    expected = kernel.copy()
    expected[0, 0, :4] -= 0.5 * grad
    np.testing.assert_allclose(shortcut.get_weights()[0], expected, rtol=1e-4, atol=1e-5)


@check
def depthwise_conv2d_matches_plain_depthwise():
    layer = layers.SlicedDepthwiseConv2D(3, slice_groups=4, depth_multiplier=2)
    layer.build((None, 6, 6, 8))
    _randomize(layer, 5)
    kernel, bias = layer.get_weights()
    for rate in RATES:
        n = active_width(8, rate, 4)
        x = np.random.default_rng(6).normal(size=(2, 6, 6, n)).astype("float32")
        plain = keras.layers.DepthwiseConv2D(3, depth_multiplier=2)
        plain.build((None, 6, 6, n))
        plain.set_weights([kernel[:, :, :n], bias[: 2 * n]])
        _close(_both_rates(layer, x, rate), plain(x), atol=1e-4)


@check
def separable_convolutions_match_plain_keras():
    pairs = (
        (layers.SlicedSeparableConv2D, keras.layers.SeparableConv2D, (6, 6)),
        (layers.SlicedSeparableConv1D, keras.layers.SeparableConv1D, (9,)),
    )
    for sliced_class, plain_class, positions in pairs:
        layer = sliced_class(8, 3, slice_groups=4, depth_multiplier=2, padding="same")
        layer.build((None, *positions, 8))
        _randomize(layer, 9)
        depthwise, pointwise, bias = layer.get_weights()
        for rate in RATES:
            n = active_width(8, rate, 4)
            x = np.random.default_rng(10).normal(size=(2, *positions, n)).astype("float32")
            plain = plain_class(n, 3, depth_multiplier=2, padding="same")
            plain.build((None, *positions, n))
            plain.set_weights([depthwise[..., :n, :], pointwise[..., : 2 * n, :n], bias[:n]])
            _close(_both_rates(layer, x, rate), plain(x), atol=1e-4)


@check
def layer_scale_multiplies_the_active_channels():
    layer = layers.SlicedLayerScale(0.5, 8, slice_groups=4)
    layer.build((None, 3, 8))
    _randomize(layer, 11)
    (gamma,) = layer.get_weights()
    for rate in RATES:
        n = active_width(8, rate, 4)
        x = np.random.default_rng(12).normal(size=(2, 3, n)).astype("float32")
        _close(_both_rates(layer, x, rate), x * gamma[:n])


@check
def group_normalization_matches_plain():
    layer = layers.SlicedGroupNormalization(groups=8, slice_groups=4)
    layer.build((None, 4, 4, 16))
    _randomize(layer, 7)
    gamma, beta = layer.get_weights()
    for rate in RATES:
        n = active_width(16, rate, 4)
        x = np.random.default_rng(8).normal(size=(2, 4, 4, n)).astype("float32")
        plain = keras.layers.GroupNormalization(groups=n // 2)
        plain.build((None, 4, 4, n))
        plain.set_weights([gamma[:n], beta[:n]])
        _close(_both_rates(layer, x, rate), plain(x), atol=1e-4)


@check
def batch_normalization_matches_plain():
    layer = layers.SlicedBatchNormalization(rates=RATES, slice_groups=4)
    layer.build((None, 16))
    _randomize(layer, 9)
    gamma, beta, mean, variance = layer.get_weights()
    for row, rate in enumerate(RATES):
        n = active_width(16, rate, 4)
        x = np.random.default_rng(10).normal(size=(6, n)).astype("float32")
        plain = keras.layers.BatchNormalization()
        plain.build((None, n))
        plain.set_weights([gamma[:n], beta[:n], mean[row, :n], variance[row, :n]])
        _close(_both_rates(layer, x, rate), plain(x), atol=1e-4)
        # Training normalizes with batch statistics and moves only this
        # rate's row, on its active channels, as the plain layer moves its own.
        _close(layer(x, rate, training=True), plain(x, training=True), atol=1e-4)
        want_mean = mean.copy()
        want_mean[row, :n] = ops.convert_to_numpy(plain.moving_mean)
        _close(layer.moving_mean, want_mean, atol=1e-5)
        mean = ops.convert_to_numpy(layer.moving_mean)


@check
def flatten_is_channels_first():
    x = np.arange(2 * 3 * 3 * 4, dtype="float32").reshape(2, 3, 3, 4)
    want = x.transpose(0, 3, 1, 2).reshape(2, -1)
    _close(layers.SlicedFlatten()(x), want, atol=0)


@check
def concatenate_interleaves_slice_groups():
    layer = layers.SlicedConcatenate(slice_groups=4)
    rng = np.random.default_rng(12)
    for rate in RATES:
        k = active_width(4, rate, 4)  # active groups of each input
        a = rng.normal(size=(2, 3, 3, 2 * k)).astype("float32")
        b = rng.normal(size=(2, 3, 3, 3 * k)).astype("float32")
        want = np.concatenate(
            [a.reshape(2, 3, 3, k, 2), b.reshape(2, 3, 3, k, 3)], -1
        ).reshape(2, 3, 3, -1)
        _close(layer([a, b], rate), want, atol=0)
        _close(layer([a, b], _rate_tensor(rate, 2)), want, atol=0)


@check
def no_tensorflow_after_the_layer_checks():
    # Keras itself imports TensorFlow when it is installed, from any
    # `get_config` (serialization) and `fit`/`predict` (tf.data); the checks
    # below use those, so this comes first.
    assert "tensorflow" not in sys.modules, "a check above imported TensorFlow"


@check
def models_equal_zero_masked_full_width():
    cnn = small_cnn(bn_rates=None)
    randomize_weights(cnn)
    mlp = small_mlp()
    randomize_weights(mlp)
    rng = np.random.default_rng(11)
    images = rng.normal(size=(4, 8, 8, 1)).astype("float32")
    features = rng.normal(size=(4, 64)).astype("float32")
    for rate in RATES:
        rate_vector = np.full(4, rate, "float32")
        _close(cnn([images, rate_vector]), masked_reference(cnn, images, rate), atol=1e-4)
        _close(mlp([features, rate_vector]), masked_reference(mlp, features, rate), atol=1e-4)


@check
def model_cost_counts(out):
    (out / "cost.json").write_text(
        json.dumps({str(r): keras_slicing.model_cost(small_cnn(), r) for r in RATES})
    )


@check
def extract_submodel_equals_sliced_model():
    model = small_cnn()
    randomize_weights(model)
    x = np.random.default_rng(12).normal(size=(4, 8, 8, 1)).astype("float32")
    for rate in RATES:
        sub = keras_slicing.extract_submodel(model, rate)
        assert not any(isinstance(l, SlicedLayerMixin) for l in sub.layers)
        _close(sub(x), model([x, np.full(4, rate, "float32")]), atol=1e-5)


@check
def keras_file_round_trip(out):
    model = small_cnn()
    randomize_weights(model)
    model.save(out / "model.keras")
    loaded = keras.saving.load_model(out / "model.keras")
    x = np.random.default_rng(13).normal(size=(4, 8, 8, 1)).astype("float32")
    outputs = {"x": x}
    for rate in RATES:
        feed = [x, np.full(4, rate, "float32")]
        outputs[str(rate)] = ops.convert_to_numpy(model(feed))
        np.testing.assert_array_equal(ops.convert_to_numpy(loaded(feed)), outputs[str(rate)])
    np.savez(out / "outputs.npz", **outputs)
    np.savez(out / "weights.npz", **{f"w{i}": w for i, w in enumerate(model.get_weights())})


@check
def loads_a_tensorflow_file(tf_dir):
    loaded = keras.saving.load_model(tf_dir / "model.keras")
    saved = np.load(tf_dir / "weights.npz")
    for i, weight in enumerate(loaded.get_weights()):
        np.testing.assert_array_equal(weight, saved[f"w{i}"])
    outputs = np.load(tf_dir / "outputs.npz")
    x = outputs["x"]
    for rate in RATES:
        got = loaded([x, np.full(len(x), rate, "float32")])
        _close(got, outputs[str(rate)], atol=1e-5)


@check
def export_tflite_writes_a_bundle(out, tf_dir):
    # Compared with TensorFlow's own export of the same file in
    # test_backends.py; the conversion runs in a TensorFlow process.
    model = keras.saving.load_model(tf_dir / "model.keras")
    keras_slicing.export_tflite(model, out / "bundle", rates=[1.0, 0.5])


@check
def calibrated_statistics_are_the_data_moments():
    model = small_cnn()
    randomize_weights(model)
    data = np.random.default_rng(14).normal(size=(8, 8, 8, 1)).astype("float32")
    keras_slicing.calibrate_batchnorm(model, data, rates=RATES, batch_size=4)
    bn = next(l for l in model.layers if isinstance(l, layers.SlicedBatchNormalization))
    bn_input = keras.Model(model.inputs, keras.tree.flatten(bn.input)[0])
    keras_slicing.check_model(bn_input, allow_sliced_outputs=True)  # narrow by design
    for rate in RATES:
        h = np.concatenate(
            [ops.convert_to_numpy(bn_input([part, np.full(4, rate, "float32")]))
             for part in (data[:4], data[4:])]
        )
        row, n = bn.row_of(rate), h.shape[-1]
        _close(ops.convert_to_numpy(bn.moving_mean)[row, :n], h.mean((0, 1, 2)), atol=1e-5)
        _close(ops.convert_to_numpy(bn.moving_variance)[row, :n], h.var((0, 1, 2)), atol=1e-4)


@check
def bad_rates_are_refused_naming_the_layer():
    layer = layers.SlicedDense(16, name="hidden")
    layer.build((None, 8))
    x = np.ones((2, 8), "float32")
    for bad in (0.0, 1.5, float("nan"), True):
        _raises(lambda: layer(x, bad), "SlicedDense 'hidden'")
    mixed = ops.convert_to_tensor(np.array([0.5, 0.25], "float32"))
    _raises(lambda: layer(x, mixed), "SlicedDense 'hidden'.*all entries")
    bn = layers.SlicedBatchNormalization(rates=[1.0, 0.5], name="bn")
    bn.build((None, 16))
    _raises(lambda: bn(np.ones((2, 4), "float32"), 0.25), "no batch-norm statistics")


@check
def static_rates_compile_and_traced_rates_are_refused():
    layer = layers.SlicedConv2D(16, 3, slice_input=False)
    x = np.random.default_rng(15).normal(size=(2, 6, 6, 3)).astype("float32")
    eager = ops.convert_to_numpy(layer(x, 0.5))
    if BACKEND == "jax":
        import jax

        run = jax.jit(lambda x, r: layer(x, r), static_argnums=1)
        _close(run(x, 0.5), eager, atol=1e-5)
        traced = jax.jit(lambda x, r: layer(x, r))
        _raises(lambda: traced(x, np.full(2, 0.5, "float32")), "traced rate.*Python float")
    elif BACKEND == "torch":
        import torch

        _close(layer(x, torch.full((2,), 0.5)), eager, atol=0)
        _raises(lambda: layer(x, torch.full((2,), 0.5, device="meta")), "without values")


@check
def plain_fit_at_a_fixed_rate_reduces_the_loss():
    model = small_mlp(features=16, classes=3)
    randomize_weights(model, seed=17)
    model.compile(
        keras.optimizers.Adam(0.02),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(16)
    x = rng.normal(size=(128, 16)).astype("float32")
    y = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0)
    hidden = next(l for l in model.layers if isinstance(l, layers.SlicedDense))
    before = ops.convert_to_numpy(hidden.kernel)
    history = model.fit(
        [x, np.full(128, 0.5, "float32")], y, epochs=6, batch_size=64, verbose=0
    )
    losses = history.history["loss"]
    assert losses[-1] < 0.7 * losses[0], losses
    # Real slicing: the inactive half of the hidden units got no update.
    after = ops.convert_to_numpy(hidden.kernel)
    np.testing.assert_array_equal(after[:, 32:], before[:, 32:])
    assert np.abs(after[:, :32] - before[:, :32]).max() > 1e-3


@check
def plain_model_refuses_a_bad_fed_rate_naming_its_input():
    x = keras.Input((8,))
    rate = keras_slicing.rate_input()
    h = layers.SlicedDense(16, slice_input=False)(x, rate)
    model = keras.Model([x, rate], layers.SlicedDense(2, slice_output=False)(h, rate),
                        name="plain")
    model.compile("sgd", "mse")
    if BACKEND == "jax":
        # Keras' JAX trainer detaches the weights during a step: a model
        # guarded before its first call keeps them (docs/checks.md).
        keras_slicing.check_model(model)
    data, y = np.ones((4, 8), "float32"), np.zeros((4, 2), "float32")
    prefix = r"^Model 'plain'\.{}, input 'slice_rate': "
    _raises(lambda: model.predict([data, np.full(4, 1.5)], verbose=0),
            prefix.format("predict") + r".*\(0, 1\]")
    model.predict([data, np.full(4, 0.5)], verbose=0)
    _raises(lambda: model.evaluate([data, np.array([0.5, 0.5, 1.0, 1.0])], y, verbose=0),
            prefix.format("evaluate") + "all entries")
    _raises(lambda: model.fit([data, np.zeros(4)], y, verbose=0), prefix.format("fit"))
    model.fit([data, np.full(4, 0.5)], y, verbose=0)


def _raises(fn, pattern):
    import re

    try:
        fn()
    except ValueError as error:
        assert re.search(pattern, str(error), re.S), str(error)
        return
    raise AssertionError(f"no ValueError matching {pattern!r}")


# Registers the SlicingModel checks after these (they use `check`).
from tests.backends import training_checks  # noqa: E402,F401


def main(out, tf_dir):
    import inspect

    results, seconds = {}, {}
    for fn in CHECKS:
        if BACKEND_ONLY.get(fn.__name__, BACKEND) != BACKEND:
            results[fn.__name__] = "not run: " + BACKEND_ONLY[fn.__name__] + " only"
            continue
        # Not keras.utils.set_random_seed: it imports TensorFlow when installed.
        keras.utils.clear_session()
        np.random.seed(0)
        args = {"out": out, "tf_dir": tf_dir}
        params = inspect.signature(fn).parameters
        start = time.perf_counter()
        try:
            fn(**{name: args[name] for name in params})
            results[fn.__name__] = "ok"
        except Exception:  # reported to the test, which fails on it
            results[fn.__name__] = traceback.format_exc()
        seconds[fn.__name__] = round(time.perf_counter() - start, 2)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "seconds.json").write_text(json.dumps(seconds, indent=1))


if __name__ == "__main__":
    # Through the package module, in which the training checks registered.
    from tests.backends import checks as registered

    registered.main(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]))
