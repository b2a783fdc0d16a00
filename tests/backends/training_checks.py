"""`SlicingModel` training checks, run on each backend by `checks.py`.

The reference for the numbers is TensorFlow: `reference_training` runs there
in the test process (`test_backends.py`) and here on the same saved model and
batches, and the weights after training must agree. The rest checks what a
user sees: per-rate logs, callbacks, evaluation, compiled steps.
"""

import keras
import numpy as np
from keras import ops

import keras_slicing
from keras_slicing.callbacks import MinRateScheduler
from keras_slicing.callbacks import SlicedValidation
from tests import step_scale_reference as step_reference
from tests.backends.checks import BACKEND
from tests.backends.checks import check
from tests.sliced_models import count_traces
from tests.sliced_models import randomize_weights
from tests.sliced_models import small_cnn
from tests.sliced_models import small_mlp

TRAIN_RATES = (1.0, 0.75, 0.5, 0.25)


def distillation_model():
    """The small CNN (with batch norm) trained on every rate with in-place
    distillation: every trained piece of the step is used."""
    cnn = small_cnn(bn_rates=TRAIN_RATES)
    return keras_slicing.SlicingModel(
        cnn.inputs, cnn.outputs, rates=TRAIN_RATES, scheduler="all",
        distillation="inplace", distillation_temperature=2.0, seed=0,
    )


def reference_training(model, steps=3, **compile_kwargs):
    """SGD steps on fixed batches; returns the losses and the weights."""
    model.compile(
        keras.optimizers.SGD(0.05),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        **compile_kwargs,
    )
    rng = np.random.default_rng(21)
    losses = []
    for _ in range(steps):
        x = rng.normal(size=(16, 8, 8, 1)).astype("float32")
        y = rng.integers(0, 10, size=(16,)).astype("int32")
        losses.append(model.train_on_batch(x, y, return_dict=True)["loss"])
    return np.array(losses, "float64"), model.get_weights()


@check
def training_matches_tensorflow(tf_dir):
    model = keras.saving.load_model(tf_dir / "train_init.keras")
    losses, weights = reference_training(model)
    want = np.load(tf_dir / "trained.npz")
    np.testing.assert_allclose(losses, want["losses"], rtol=1e-4)
    assert len(weights) == len(want.files) - 1
    for i, weight in enumerate(weights):
        # Batch-norm statistics included: the forward passes' updates of
        # non-trainable state reach the model on every backend.
        np.testing.assert_allclose(weight, want[f"w{i}"], rtol=1e-4, atol=1e-5)


@check(backend="torch")
def torch_compiled_widths_match_tensorflow(tf_dir):
    """jit_compile=True on PyTorch: each width's forward pass compiled by
    torch.compile as one graph (numpy batches, as train_on_batch passes
    them), batch-norm updates and distillation included."""
    from torch._dynamo.utils import counters  # Dynamo's own tally, test only

    model = keras.saving.load_model(tf_dir / "train_init.keras")
    counters.clear()
    losses, weights = reference_training(model, jit_compile=True)
    assert sorted(model._compiled_widths) == sorted(TRAIN_RATES), model._compiled_widths
    # A graph break falls back to running the layers one by one: slower
    # than not compiling, and silent.
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == len(TRAIN_RATES), dict(counters["stats"])
    want = np.load(tf_dir / "trained.npz")
    np.testing.assert_allclose(losses, want["losses"], rtol=1e-4)
    for i, weight in enumerate(weights):
        np.testing.assert_allclose(weight, want[f"w{i}"], rtol=1e-4, atol=1e-5)


def _mlp_task(seed=16):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(128, 16)).astype("float32")
    y = ((x[:, 0] > 0).astype("int32") + (x[:, 1] > 0)).astype("int32")
    return x, y


def _sliced_mlp(seed=1, **kwargs):
    mlp = small_mlp(features=16, classes=3)
    randomize_weights(mlp, seed=17)
    return keras_slicing.SlicingModel(
        mlp.inputs, mlp.outputs, rates=TRAIN_RATES, seed=seed, **kwargs
    )


@check
def step_scales_match_a_hand_computed_step():
    """Per-width step scales (a StatelessScope on JAX, in-place on PyTorch):
    SGD and Adam steps equal numpy's, each element's step scaled."""
    for optimizer, reference_step in (
        (keras.optimizers.SGD(0.1), lambda w: step_reference.sgd_step(
            w, *step_reference.batch(), 0.1)),
        (keras.optimizers.Adam(0.01), lambda w: step_reference.first_adam_step(
            w, *step_reference.batch(), 0.01)),
    ):
        model = step_reference.linear_model()
        before, after = step_reference.trained_one_step(model, optimizer)
        for got, want in zip(after, reference_step(before)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@check
def fit_logs_each_rate_and_callbacks_run():
    x, y = _mlp_task()
    model = _sliced_mlp()
    model.compile(
        keras.optimizers.Adam(0.02),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    schedule = keras_slicing.callbacks.shrinking_schedule(model.rates, epochs_per_rate=1)
    history = model.fit(
        x, y, epochs=5, batch_size=32, verbose=0,
        callbacks=[
            SlicedValidation((x, y), rates=(1.0, 0.25)),
            MinRateScheduler(schedule),
        ],
    )
    logs = history.history
    # Epoch 0 trains width 1 alone (min_rate 1.0): the other rates have no
    # entry then, and every rate has one from epoch 3 on.
    assert len(logs["loss@1"]) == 5 and len(logs["accuracy@0.25"]) == 2, {
        k: len(v) for k, v in logs.items()
    }
    assert logs["min_rate"] == [1.0, 0.75, 0.5, 0.25, 0.25], logs["min_rate"]
    assert len(logs["val_accuracy@0.25"]) == 5
    assert logs["loss@1"][-1] < 0.7 * logs["loss@1"][0], logs["loss@1"]
    results = model.evaluate_rates(x, y)
    assert sorted(results) == sorted(TRAIN_RATES)
    assert results[1.0]["accuracy"] > 0.8, results
    np.testing.assert_allclose(
        results[0.25]["accuracy"], logs["val_accuracy@0.25"][-1], atol=1e-6
    )
    # The narrow model cut out of the trained weights answers as the model.
    full = ops.convert_to_numpy(model([x, np.full(len(x), 0.5, "float32")]))
    np.testing.assert_allclose(
        model.at_rate(0.5).predict(x, verbose=0), full, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        keras_slicing.extract_submodel(model, 0.5).predict(x, verbose=0),
        full, rtol=1e-5, atol=1e-5,
    )


@check
def each_rate_set_compiles_once():
    x, y = _mlp_task()
    model = _sliced_mlp(scheduler="random_min_max")
    model.compile(
        keras.optimizers.Adam(0.02),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    traces = count_traces(model)
    model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    sets = sorted(model.compiled_rate_sets)
    if BACKEND == "jax":
        # Widest and narrowest, plus one of the two middle rates: two sets,
        # each traced once over 32 steps.
        assert sets == [(1.0, 0.5, 0.25), (1.0, 0.75, 0.25)], sets
        assert sorted(traces) == sorted(set(traces)) and len(traces) == 2, traces
    else:  # eager: a step per batch, no compiled step kept
        assert sets == [] and len(traces) == 32, (sets, len(traces))
        assert {len(t) for t in traces} == {3}, traces


@check(backend="jax")  # keras.distribution runs on JAX only
def data_parallel_trains_as_one_device():
    import jax

    devices = jax.devices("cpu")
    assert len(devices) == 2, (
        "XLA_FLAGS=--xla_force_host_platform_device_count=2 is not in effect: "
        f"{devices}"
    )
    x, y = _mlp_task()
    weights = {}
    for name in ("one", "two"):
        distribution = keras.distribution.DataParallel(
            devices=devices if name == "two" else devices[:1]
        )
        with distribution.scope():
            model = _sliced_mlp(scheduler="random_min_max")
            model.compile(
                keras.optimizers.Adam(0.02),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
            model.fit(x, y, epochs=2, batch_size=32, verbose=0, shuffle=False)
        weights[name] = model.get_weights()
    for one, two in zip(weights["one"], weights["two"]):
        np.testing.assert_allclose(two, one, rtol=1e-5, atol=1e-5)


@check
def fed_rates_run_at_that_width():
    x, y = _mlp_task()
    model = _sliced_mlp()
    model.compile(
        "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    for rate in (0.5, 0.25):
        fed = [x, np.full((len(x), 1), rate, "float32")]
        want = ops.convert_to_numpy(model([x, np.full(len(x), rate, "float32")]))
        np.testing.assert_allclose(model.predict(fed, verbose=0), want, atol=1e-5)
        np.testing.assert_allclose(
            ops.convert_to_numpy(model.predict_on_batch(fed)), want, atol=1e-5
        )
        accuracy = float(np.mean(want.argmax(-1) == y))
        logs = model.evaluate(fed, y, verbose=0, return_dict=True)
        np.testing.assert_allclose(logs["accuracy"], accuracy, atol=1e-6)
        by_rates = model.evaluate_rates(x, y, rates=[rate])[rate]
        np.testing.assert_allclose(by_rates["loss"], logs["loss"], rtol=1e-5)


@check
def fit_recalibrates_batchnorm_and_a_teacher_stays_frozen():
    """fit ends with every width's batch-norm statistics computed on the
    training data (no stale row left), after steps that learned from a
    frozen teacher whose weights did not move."""
    cnn = small_cnn(bn_rates=TRAIN_RATES)
    randomize_weights(cnn, seed=9)
    image = keras.Input((8, 8, 1))
    teacher = keras.Model(image, keras.layers.Dense(10)(keras.layers.Flatten()(image)))
    model = keras_slicing.SlicingModel(
        cnn.inputs, cnn.outputs, rates=TRAIN_RATES, distillation=teacher, seed=0
    )
    model.compile(
        keras.optimizers.SGD(0.05),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(22)
    x = rng.normal(size=(32, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, size=(32,)).astype("int32")
    frozen = [w.copy() for w in teacher.get_weights()]
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    for old, new in zip(frozen, teacher.get_weights()):
        np.testing.assert_array_equal(old, new)
    bn = next(
        l for l in model.layers
        if isinstance(l, keras_slicing.layers.SlicedBatchNormalization)
    )
    assert bn.stale_rates == (), bn.stale_rates
    # Nothing normalizes by batch before this layer: its inputs are the
    # data's, batch by batch alike.
    bn_input = keras.Model(model.inputs, keras.tree.flatten(bn.input)[0])
    keras_slicing.check_model(bn_input, allow_sliced_outputs=True)  # narrow by design
    for rate in TRAIN_RATES:
        h = np.concatenate([
            ops.convert_to_numpy(bn_input([part, np.full(16, rate, "float32")]))
            for part in (x[:16], x[16:])
        ]).astype("float64")
        row, n = bn.row_of(rate), h.shape[-1]
        np.testing.assert_allclose(
            ops.convert_to_numpy(bn.moving_mean)[row, :n], h.mean((0, 1, 2)), atol=1e-5
        )
        np.testing.assert_allclose(
            ops.convert_to_numpy(bn.moving_variance)[row, :n], h.var((0, 1, 2)),
            rtol=1e-4, atol=1e-5,
        )


@check
def mixed_width_training_lowers_the_loss_of_a_pooled_configuration():
    x, y = _mlp_task()
    mlp = small_mlp(features=x.shape[1], classes=3)
    model = keras_slicing.SlicingModel(
        mlp.inputs, mlp.outputs, rates=(1.0, 0.5), seed=0,
        scheduler=keras_slicing.MixedWidthScheduler(pool_size=2),
    )
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    config = model.scheduler.configurations(model)[0]

    def loss():
        logits = ops.convert_to_numpy(model.at_rate(config)(x)).astype("float64")
        logits -= logits.max(-1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        return -log_p[np.arange(len(y)), y].mean()

    before = loss()
    model.fit(x, y, batch_size=32, epochs=8, verbose=0)
    assert loss() < 0.8 * before, (before, loss())
