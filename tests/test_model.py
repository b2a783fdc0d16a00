"""SlicingModel: training step, rates in logs, at_rate, evaluate_rates, saving."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

from keras_slicing import SlicingModel
from keras_slicing import calibrate_batchnorm
from keras_slicing import layers
from keras_slicing import rate_input
from keras_slicing.layers import SlicedBatchNormalization
from tests.sliced_models import randomize_weights
from tests.sliced_models import small_cnn
from tests.sliced_models import small_mlp

RATES = (1.0, 0.75, 0.5, 0.25)
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    x = (data.images / 16.0).astype("float32")
    return x, data.target.astype("int32")


def _mlp(**kwargs):
    base = small_mlp()
    return SlicingModel(base.inputs, base.outputs, **kwargs)


def _cnn(**kwargs):
    """conv16 - GN - conv32/2 - flatten - dense: learns digits in a few epochs."""
    x = keras.Input((8, 8, 1), name="image")
    rate = rate_input()
    h = layers.SlicedConv2D(16, 3, padding="same", slice_input=False)(x, rate)
    h = layers.SlicedGroupNormalization(groups=8)(h, rate)
    h = keras.layers.ReLU()(h)
    h = layers.SlicedConv2D(32, 3, strides=2, padding="same", activation="relu")(h, rate)
    h = layers.SlicedFlatten()(h)
    y = layers.SlicedDense(10, slice_output=False, name="logits")(h, rate)
    return SlicingModel([x, rate], y, **kwargs)


def _softmax_ce(logits, labels):
    logits = logits - logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -log_p[np.arange(len(labels)), labels].mean()


def _at(model, x, rate):
    """Outputs through the model's own graph with the rate input fed."""
    return keras.ops.convert_to_numpy(model([x, np.full(len(x), rate, "float32")]))


def test_fit_logs_total_loss_and_each_rate_metric(digits):
    x, y = digits
    model = _mlp(seed=1, scheduler="all")  # every rate runs, so every rate logs
    model.compile("adam", LOSS, metrics=["accuracy"])
    history = model.fit(x[:256].reshape(-1, 64), y[:256], batch_size=64, verbose=0)
    expected = {"loss"} | {
        f"{name}@{r:g}" for r in RATES for name in ("loss", "accuracy")
    }
    assert set(history.history) == expected
    assert all(np.isfinite(v[0]) for v in history.history.values())


def test_sampling_varies_per_step_without_retracing(digits):
    x, y = digits
    model = _mlp(seed=2, scheduler="random_min_max")
    model.compile("sgd", LOSS)
    traces = []
    step = model.train_step
    model.train_step = lambda data: traces.append(1) or step(data)
    dataset = tf.data.Dataset.from_tensor_slices((x[:512].reshape(-1, 64), y[:512]))
    history = model.fit(dataset.batch(32), epochs=2, shuffle=False, verbose=0)
    assert len(traces) <= 2  # Keras may trace once more with relaxed shapes
    # random_min_max: 1.0 and 0.25 run every step, 0.75 / 0.5 share the rest.
    for key in ("loss@0.75", "loss@0.5"):
        assert all(v > 0 for v in history.history[key])


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"rate_loss_weights": {1.0: 1.0, 0.75: 0.5, 0.5: 2.0, 0.25: 0.0}},
        {"distillation": "inplace", "distillation_weight": 0.7},
        {"distillation": "inplace", "distillation_weight": 0.7,
         "distillation_temperature": 2.5},
        # The first step of a warm-up: soft targets weigh 0 * 0.7.
        {"distillation": "inplace", "distillation_weight": 0.7,
         "distillation_warmup": 10},
    ],
    ids=["plain", "weighted", "distilled", "temperature", "warmup"],
)
def test_one_step_applies_summed_rate_losses_in_one_update(options):
    model = _mlp(scheduler="all", **options)
    randomize_weights(model, seed=3)
    x = np.random.default_rng(0).normal(size=(16, 64)).astype("float32")
    y = np.arange(16) % 10
    lr = 0.05
    model.compile(keras.optimizers.SGD(lr), LOSS)

    # Default: the narrow rates weigh more (3 - 2r), but evenly under
    # distillation.
    default = {1.0: 1.0, 0.75: 1.5, 0.5: 2.0, 0.25: 2.5}
    if options.get("distillation"):
        default = {r: 1.0 for r in RATES}
    weights = options.get("rate_loss_weights", default)
    alpha = options.get("distillation_weight", 0.0)
    if options.get("distillation_warmup"):
        alpha = 0.0
    t = options.get("distillation_temperature", 1.0)
    distill = options.get("distillation") == "inplace"
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        total = 0.0
        teacher = None
        for rate in RATES:
            logits = model([x, np.full(16, rate, "float32")])
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)
            )
            if distill and teacher is not None:
                soft = t * t * tf.reduce_mean(
                    tf.nn.softmax_cross_entropy_with_logits(
                        tf.nn.softmax(teacher / t), logits / t
                    )
                )
                # The three narrower rates share the weight of one rate.
                loss = ((1 - alpha) * loss + alpha * soft) / 3
            if teacher is None:
                teacher = tf.stop_gradient(logits)
            total += weights[rate] * loss
    gradients = tape.gradient(total, variables)
    expected = [v.numpy() - lr * g.numpy() for v, g in zip(variables, gradients)]

    model.train_on_batch(x, y)
    assert int(model.optimizer.iterations.numpy()) == 1
    for variable, want in zip(model.trainable_variables, expected):
        np.testing.assert_allclose(variable.numpy(), want, rtol=1e-4, atol=1e-5)


def test_jit_compile_trains_like_in_graph_sampling(digits):
    x, y = digits
    x = x[:192].reshape(-1, 64)
    runs = []
    for jit in (False, True):
        model = _mlp(seed=5)
        randomize_weights(model, seed=4)
        model.compile(keras.optimizers.SGD(0.05), LOSS, jit_compile=jit)
        model.fit(x, y[:192], batch_size=64, epochs=2, shuffle=False, verbose=0)
        runs.append(model)
    assert runs[1].jit_compile is True
    assert runs[1].get_compile_config()["jit_compile"] is True
    for a, b in zip(runs[0].trainable_variables, runs[1].trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)


def test_evaluate_and_predict_without_rate_use_full_width(digits):
    x, y = digits
    model = _mlp()
    randomize_weights(model, seed=6)
    model.compile("sgd", LOSS, metrics=["accuracy"])
    data = x[:100].reshape(-1, 64)
    full = _at(model, data, 1.0)
    np.testing.assert_allclose(model.predict(data, verbose=0), full, atol=1e-5)
    np.testing.assert_allclose(model(data), full, atol=1e-5)
    result = model.evaluate(data, y[:100], return_dict=True, verbose=0)
    assert result["loss"] == pytest.approx(_softmax_ce(full, y[:100]), rel=1e-4)
    assert result["accuracy"] == pytest.approx(np.mean(full.argmax(1) == y[:100]))


def test_evaluate_rates_reports_each_rate_like_numpy(digits):
    x, y = digits
    model = _mlp()
    randomize_weights(model, seed=7)
    model.compile("sgd", LOSS, metrics=["accuracy"])
    data, labels = x[:120].reshape(-1, 64), y[:120]
    results = model.evaluate_rates(data, labels, rates=[0.25, 0.5])
    assert list(results) == [0.25, 0.5]
    for rate, values in results.items():
        logits = _at(model, data, rate)
        assert values["loss"] == pytest.approx(_softmax_ce(logits, labels), rel=1e-4)
        assert values["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == labels))


@pytest.mark.parametrize("rate", [1.0, 0.5, 0.3])
def test_at_rate_equals_model_fed_with_rate(rate):
    model = _mlp()
    randomize_weights(model, seed=8)
    x = np.random.default_rng(1).normal(size=(5, 64)).astype("float32")
    sub = model.at_rate(rate)
    assert sub.inputs[0].shape == (None, 64)
    np.testing.assert_allclose(sub(x), _at(model, x, rate), atol=1e-5)


def test_at_rate_shares_weights_with_the_model():
    model = _mlp()
    sub = model.at_rate(0.5)
    assert {id(v) for v in sub.weights} <= {id(v) for v in model.weights}
    x = np.ones((2, 64), "float32")
    before = keras.ops.convert_to_numpy(sub(x))
    kernel = model.layers[2].kernel
    kernel.assign(kernel.numpy() + 1.0)
    assert not np.allclose(sub(x), before)
    np.testing.assert_allclose(sub(x), _at(model, x, 0.5), atol=1e-5)
    assert model.at_rate(0.5) is sub


def test_at_rate_exports_a_saved_model(tmp_path):
    model = _mlp()
    randomize_weights(model, seed=9)
    x = np.random.default_rng(2).normal(size=(3, 64)).astype("float32")
    model.at_rate(0.25).export(str(tmp_path / "quarter"), verbose=False)
    restored = tf.saved_model.load(str(tmp_path / "quarter"))
    np.testing.assert_allclose(restored.serve(x), _at(model, x, 0.25), atol=1e-5)


@pytest.mark.slow
def test_small_cnn_learns_digits_at_every_rate_and_keeps_it_after_save(digits, tmp_path):
    x, y = digits
    x = x[..., None]
    model = _cnn(seed=0)
    model.compile(keras.optimizers.Adam(3e-3), LOSS, metrics=["accuracy"])
    model.fit(x[:1400], y[:1400], batch_size=64, epochs=6, verbose=0)
    results = model.evaluate_rates(x[1400:], y[1400:])
    for rate in RATES:
        assert results[rate]["accuracy"] > 0.7, results  # chance is 0.1

    model.save(tmp_path / "sliced.keras")
    loaded = keras.models.load_model(tmp_path / "sliced.keras")
    assert isinstance(loaded, SlicingModel)
    assert loaded.rates == model.rates
    assert loaded.get_config()["scheduler"] == "all"
    again = loaded.evaluate_rates(x[1400:], y[1400:])
    for rate in RATES:
        assert again[rate]["accuracy"] == pytest.approx(results[rate]["accuracy"])


def test_config_round_trip_keeps_slicing_options():
    model = _mlp(
        rates=[0.25, 1.0, 0.5],
        scheduler="random",
        num_random=2,
        rate_probabilities=[1.0, 3.0, 2.0],
        rate_loss_weights={1.0: 2.0, 0.5: 1.0, 0.25: 0.5},
        distillation="inplace",
        distillation_weight=0.5,
        distillation_temperature=3.0,
        distillation_warmup=100,
        seed=11,
    )
    clone = SlicingModel.from_config(model.get_config())
    assert clone.rates == (1.0, 0.5, 0.25)
    config = clone.get_config()
    assert config["rate_probabilities"] == [3.0, 2.0, 1.0]  # widest first
    assert config["rate_loss_weights"] == [2.0, 1.0, 0.5]
    assert (config["distillation"], config["distillation_weight"]) == ("inplace", 0.5)
    assert config["distillation_temperature"] == 3.0
    assert config["distillation_warmup"] == 100
    assert clone.scheduler.num_random == 2


def test_batchnorm_rows_of_every_trained_rate_are_updated(digits):
    x, y = digits
    base = small_cnn(bn_rates=RATES)
    model = SlicingModel(base.inputs, base.outputs, scheduler="all")
    model.compile("sgd", LOSS)
    # The moving averages of training, not the calibration fit ends with.
    model.fit(x[:64, ..., None], y[:64], batch_size=32, verbose=0,
              calibrate_batchnorm=False)
    bn = next(l for l in model.layers if isinstance(l, SlicedBatchNormalization))
    means = bn.moving_mean.numpy()
    for rate in RATES:
        width = int(16 * rate)
        assert np.all(means[bn.row_of(rate), :width] != 0.0)
        assert np.all(means[bn.row_of(rate), width:] == 0.0)
    calibrate_batchnorm(model, x[:64, ..., None])  # works on a SlicingModel
    assert not np.allclose(bn.moving_mean.numpy(), means)


def test_mixed_float16_trains_and_matches_float32(digits):
    x, y = digits
    data = x[:128].reshape(-1, 64)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _mlp(seed=3)
        model.compile("adam", LOSS)
        history = model.fit(data, y[:128], batch_size=32, epochs=2, verbose=0)
        assert model.at_rate(0.5)(data).dtype == "float16"
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert np.all(np.isfinite(history.history["loss"]))
    reference = _mlp()
    reference.set_weights(model.get_weights())
    for rate in (1.0, 0.25):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(model.at_rate(rate)(data)).astype("float32"),
            _at(reference, data, rate),
            rtol=2e-2,
            atol=2e-2,
        )


def test_fit_rejects_data_that_carries_the_rate(digits):
    x, y = digits
    model = _mlp()
    model.compile("sgd", LOSS)
    data = x[:8].reshape(-1, 64)
    with pytest.raises(ValueError, match="samples the slice rates itself"):
        model.fit([data, np.ones(8, "float32")], y[:8], verbose=0)


def test_compile_without_loss_is_rejected():
    with pytest.raises(ValueError, match="needs a loss"):
        _mlp().compile("sgd")


def test_model_without_rate_input_is_rejected():
    x = keras.Input((4,))
    rate = rate_input()
    y = keras.layers.Dense(2)(x)
    with pytest.raises(ValueError, match="no input feeds the rate"):
        SlicingModel([x, rate], y)


def test_rate_undeclared_by_batchnorm_is_rejected():
    base = small_cnn(bn_rates=(1.0, 0.5))
    with pytest.raises(ValueError, match="no batch-norm statistics for rate=0.75"):
        SlicingModel(base.inputs, base.outputs, rates=(1.0, 0.75, 0.5))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rates": (1.0, 0.5, 0.5)}, "rates must be distinct"),
        ({"rates": (1.0, 1.5)}, "must be in \\(0, 1\\]"),
        ({"rate_loss_weights": [1.0, 2.0]}, "one finite non-negative number per rate"),
        ({"rate_probabilities": {1.0: 1.0}}, "one finite non-negative number per rate"),
        ({"distillation": "kd"}, "distillation must be None, .inplace. or a keras.Model"),
        ({"distillation_weight": 1.5}, "distillation_weight must be in"),
        ({"distillation_temperature": 0.0}, "distillation_temperature must be"),
        ({"distillation_temperature": 2.0, "distillation_from_logits": False},
         "distillation_temperature needs logits"),
        ({"distillation_warmup": -1}, "distillation_warmup must be"),
        ({"distillation_warmup": 2.5}, "distillation_warmup must be"),
    ],
)
def test_bad_slicing_options_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _mlp(**kwargs)


def test_min_rate_outside_the_rates_is_rejected():
    model = _mlp(rates=(0.75, 0.5), scheduler="all")
    with pytest.raises(ValueError, match="min_rate must be in"):
        model.min_rate = 0.9


def test_evaluate_returns_values_in_metrics_names_order(digits):
    x, y = digits
    x = x[:64].reshape(-1, 64)
    model = _mlp(rates=(1.0, 0.5), seed=0)
    top3 = keras.metrics.SparseTopKCategoricalAccuracy(k=3, name="top3")
    model.compile("adam", LOSS, metrics=["accuracy", top3])
    model.fit(x, y[:64], batch_size=32, verbose=0)
    logs = model.evaluate(x, y[:64], verbose=0, return_dict=True)
    values = model.evaluate(x, y[:64], verbose=0)
    assert model.metrics_names == ["loss", "accuracy", "top3"]
    assert dict(zip(model.metrics_names, values)) == pytest.approx(logs)
    batch = model.test_on_batch(x, y[:64])
    assert len(batch) == len(model.metrics_names)


def test_rates_not_run_in_an_epoch_are_left_out_of_the_logs(digits):
    x, y = digits
    x = x[:64].reshape(-1, 64)
    model = _mlp(seed=0)
    model.compile("adam", LOSS, metrics=["accuracy"])
    model.min_rate = 1.0  # every step runs the full width only
    history = model.fit(x, y[:64], batch_size=32, verbose=0).history
    assert set(history) == {"loss", "loss@1", "accuracy@1"}
    assert history["loss@1"][0] > 0
    # The step itself reports NaN (never a perfect 0) for a rate not run yet.
    model.reset_metrics()
    logs = model.train_step((keras.ops.convert_to_tensor(x), y[:64]))
    assert np.isnan(float(logs["loss@0.5"])) and np.isnan(float(logs["accuracy@0.25"]))
    assert float(logs["loss@1"]) > 0


@pytest.mark.parametrize(
    "rate",
    [0.5, np.float32(0.5), np.full((8,), 0.5, "float32"), np.full((8, 1), 0.5, "float32")],
    ids=["python", "scalar", "vector", "column"],
)
def test_rate_fed_as_number_vector_or_column_gives_the_same_width(rate):
    model = _mlp()
    x = np.random.default_rng(0).random((8, 64)).astype("float32")
    reference = keras.ops.convert_to_numpy(model.at_rate(0.5)(x))
    np.testing.assert_allclose(model.predict([x, rate], verbose=0), reference, atol=1e-6)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model([x, rate])), reference, atol=1e-6
    )


def test_rate_of_another_shape_is_refused_naming_the_allowed_ones():
    model = _mlp()
    x = np.zeros((8, 64), "float32")
    with pytest.raises(ValueError, match=r"\(N,\) or \(N, 1\).*shape \(8, 2\)"):
        model.predict([x, np.full((8, 2), 0.5, "float32")], verbose=0)


def test_same_arguments_work_for_every_scheduler_and_number_of_rates():
    base = small_mlp()
    names = ["random", "random_min", "random_max", "random_min_max", "all"]
    for scheduler in names:
        for rates in [(1.0,), (1.0, 0.5), (1.0, 0.5, 0.25), RATES]:
            for num_random in (None, 1):
                model = SlicingModel(
                    base.inputs, base.outputs, rates=rates, scheduler=scheduler,
                    num_random=num_random,
                )
                runs = model.scheduler.num_rates(model.rates)
                drawn = keras.ops.convert_to_numpy(
                    model.scheduler.sample(model.rates, keras.random.SeedGenerator(0))
                ).tolist()
                assert len(set(drawn)) == len(drawn) == runs >= 1
                if scheduler == "all" or (scheduler == "random_min_max" and len(rates) <= 3):
                    assert runs == len(rates)


@pytest.mark.slow
def test_inplace_distillation_with_every_rate_still_learns_the_labels(digits):
    # Summed, the soft targets of three narrower rates outweighed the label
    # term of the widest 3 to 1; the shared weights then chased the widest
    # rate and it fell to 28% after 5 epochs (63% after 25). With the
    # narrower rates sharing one unit of weight it learns as without
    # distillation (75% after 5 epochs here).
    x, y = digits
    x = x[..., None]
    rate = rate_input()
    inputs = keras.Input((8, 8, 1))
    h = inputs
    for i, width in enumerate((32, 64)):
        h = layers.SlicedConv2D(width, 3, padding="same", slice_input=i > 0)(h, rate)
        h = layers.SlicedGroupNormalization(groups=8)(h, rate)
        h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = layers.SlicedDense(10, slice_output=False)(h, rate)
    keras.utils.set_random_seed(0)
    model = SlicingModel(
        [inputs, rate], outputs, scheduler="all", distillation="inplace", seed=0
    )
    model.compile(keras.optimizers.Adam(3e-3), LOSS, metrics=["accuracy"])
    model.fit(x[:1400], y[:1400], batch_size=64, epochs=5, verbose=0)
    accuracy = model.evaluate(x[1400:], y[1400:], return_dict=True, verbose=0)
    assert accuracy["accuracy"] > 0.6


_BAD_RATES = {
    "zero": (np.zeros(8, "float32"), r"must be in \(0, 1\]\. Received: rate=0\.0"),
    "above one": (np.full(8, 1.5, "float32"), r"must be in \(0, 1\]\. Received: rate=1\.5"),
    "nan": (np.full(8, np.nan, "float32"), r"must be in \(0, 1\]\. Received: rate=nan"),
    "unequal": (np.array([0.5] * 4 + [1.0] * 4, "float32"), r"must be equal.*\[0\.5, 1\.0\]"),
    "short vector": (np.full(2, 0.5, "float32"), r"\(N,\) or \(N, 1\), N = 8.*shape \(2,\)"),
    "text array": (np.array(["0.5"] * 8), r"a number in \(0, 1\].*dtype <U3"),
    "text": ("0.5", r"a number in \(0, 1\].*rate='0\.5'"),
}


@pytest.mark.parametrize("bad", sorted(_BAD_RATES))
def test_bad_fed_rate_is_refused_naming_the_entry_point_and_the_rate_input(bad):
    model = _mlp()
    model.compile("sgd", LOSS)
    x = np.random.default_rng(0).random((8, 64)).astype("float32")
    rate, message = _BAD_RATES[bad]
    entries = {
        "predict": lambda: model.predict([x, rate], verbose=0),
        "evaluate": lambda: model.evaluate([x, rate], np.zeros(8, "int32"), verbose=0),
        "__call__": lambda: model([x, rate]),
    }
    for entry, run in entries.items():
        with pytest.raises(ValueError, match=message) as error:
            run()
        text = str(error.value)
        assert text.startswith(f"SlicingModel '{model.name}'.{entry}, input 'slice_rate'")
        assert "at_rate" not in text and len(text) < 300
