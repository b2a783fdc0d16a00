import functools

import keras
import numpy as np
from keras import ops

# Keras internals, kept to this block: the per-rate copies of the compiled
# metrics reuse Keras' own resolution of names such as "accuracy", and the
# loss tracker must undo the per-replica loss scaling as Keras' step does.
from keras.src.losses.loss import unscale_loss_for_distribution
from keras.src.trainers.compile_utils import CompileMetrics
from keras.src.utils import tracking

from keras_slicing import backend
from keras_slicing import checks
from keras_slicing import graph
from keras_slicing import rates as rates_lib
from keras_slicing import schedulers as schedulers_lib
from keras_slicing.layers.batch_normalization import SlicedBatchNormalization

_SLICING_ARGS = (
    "rates",
    "scheduler",
    "num_random",
    "rate_probabilities",
    "rate_loss_weights",
    "distillation",
    "distillation_weight",
    "distillation_from_logits",
    "distillation_temperature",
    "distillation_warmup",
    "seed",
)
_DISTILLATION_MODES = (None, "inplace")
_SEED_KEY = "rate_sampler_state"


@keras.saving.register_keras_serializable(package="keras_slicing")
class SlicingModel(keras.Model):
    """A functional model that trains all its slice rates at once.

    Build it like a functional `keras.Model` whose inputs include
    `keras_slicing.rate_input()`, then `compile` and `fit` on ordinary data:
    the rate input is never fed by the user. Each training step the
    scheduler picks some of `rates` (inside the compiled step, from the
    model's seed), the whole batch runs at each picked width, the per-rate
    losses are summed (optionally weighted) and the optimizer makes ONE
    update. A rate reaches the layers as a tensor, so one trace serves every
    rate (see `compile` for `jit_compile=True`).

    `fit` logs the total `loss` and, per rate, `loss@<rate>` and every
    compiled metric as `<name>@<rate>` (rate written with `format(r, "g")`,
    e.g. `accuracy@0.25`); they average over the steps that ran the rate, and
    a rate not run yet in an epoch is left out of the logs (the step itself
    reports NaN for it, never 0). `evaluate`, `predict` and calling
    the model without a rate use full width (rate 1.0); `evaluate_rates`
    evaluates several rates and `at_rate(r)` gives a plain `keras.Model` of
    the data inputs at rate `r` that shares the weights.

    Args:
        inputs: The model inputs, a list holding the data input(s) and the
            rate input (from `keras_slicing.rate_input()`).
        outputs: The model outputs.
        rates: The rates to train, each in (0, 1]. Stored widest first in
            `model.rates`. Defaults to `(1.0, 0.75, 0.5, 0.25)`.
        scheduler: Which rates a step runs: `"random"` (`num_random` rates
            drawn from `rates`), `"random_min"`, `"random_max"`,
            `"random_min_max"` (always the narrowest and/or widest rate
            plus `num_random` others), `"all"`, or a
            `keras_slicing.schedulers.RateScheduler`. Defaults to `"all"`:
            1.9 full-width passes per step for the default rates (what
            training every width separately costs) against 1.5 for the
            paper's `"random_min_max"`; with the default `rate_loss_weights`
            it came closest to models trained alone, width by width, on the
            validation splits of `benchmarks/accuracy.py`.
        num_random: Number of randomly drawn rates of a named random
            scheduler; when fewer rates are left, all of them run, and
            `"all"` ignores it. Defaults to 1.
        rate_probabilities: Optional sampling weights of a named random
            scheduler, one per entry of `rates` (or a dict rate -> weight).
        rate_loss_weights: Optional weights of the per-rate losses in the
            sum, one per entry of `rates` (or a dict rate -> weight).
            Defaults to `3 - 2 * r` for rate `r`: 1 at full width, 2.5 at
            0.25. On the validation splits of digits and MNIST-1D it kept
            every width within 0.9 points of models trained alone (an even
            sum: 1.6 behind at width 0.5 of digits). Pass
            `[1.0] * len(rates)` for an even sum. With `distillation` the
            default is 1 for every rate.
        distillation: `None`, or `"inplace"` for in-place distillation as in
            Universally Slimmable Networks: the widest rate of the step
            learns from the labels, every narrower rate from
            `(1 - distillation_weight) * label_loss + distillation_weight *
            CE(softmax(widest), narrower)`, the widest predictions detached.
            The narrower rates of a step share the weight of one rate: with
            `n` of them, each term counts `1/n` (times its
            `rate_loss_weights` entry), so with even weights the labels keep
            half the say.
            Requires a single output.
        distillation_weight: The weight above, in [0, 1]. Defaults to `1.0`
            (soft targets only, as in US-Nets).
        distillation_from_logits: Whether the output is logits (`True`) or
            probabilities. Defaults to `True`.
        distillation_temperature: Temperature `T` of the soft targets: the
            narrower rates match `softmax(widest / T)` with
            `softmax(narrower / T)`, the term multiplied by `T**2` so that its
            gradient keeps its scale (Hinton et al.). Needs logits. Defaults
            to `1.0`.
        distillation_warmup: Number of optimizer steps over which the weight
            of the soft targets grows linearly from 0 to
            `distillation_weight`: early on the widest rate is no better than
            chance, and narrower rates matching it would learn noise (and,
            through the shared weights, hold the widest back). Defaults to
            `0` (full weight from the first step).
        seed: Integer seed of the rate sampling. Defaults to a random seed.
        name: Model name.

    Example:

    ```python
    x = keras.Input((8, 8, 1))
    rate = keras_slicing.rate_input()
    h = SlicedConv2D(16, 3, slice_input=False, activation="relu")(x, rate)
    h = keras.layers.GlobalAveragePooling2D()(h)
    y = SlicedDense(10, slice_output=False)(h, rate)
    model = SlicingModel([x, rate], y, rates=(1.0, 0.5, 0.25))
    model.compile("adam",
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(images, labels, epochs=2)  # logs accuracy@0.25, ...
    model.at_rate(0.5).predict(images)
    ```

    Reference:
    - [Cai et al., 2020](https://arxiv.org/abs/1904.01831), Model Slicing.
    - [Yu & Huang, 2019](https://arxiv.org/abs/1903.05134), Universally
      Slimmable Networks (sandwich rule, in-place distillation).
    """

    def __init__(
        self,
        inputs,
        outputs,
        rates=rates_lib.DEFAULT_RATES,
        scheduler="all",
        num_random=None,
        rate_probabilities=None,
        rate_loss_weights=None,
        distillation=None,
        distillation_weight=1.0,
        distillation_from_logits=True,
        distillation_temperature=1.0,
        distillation_warmup=0,
        seed=None,
        name=None,
        **kwargs,
    ):
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)
        owner = f"SlicingModel '{self.name}'"
        rate_ids = {id(t) for t in graph.rate_inputs(self)}
        if not rate_ids:
            raise ValueError(
                f"{owner}: no input feeds the rate of a sliced layer. Build "
                "the model from [x, rate] with rate = "
                "keras_slicing.rate_input() and call sliced layers as "
                "layer(h, rate)."
            )
        checks.check_model(self)
        given = rates_lib.validate_rates(rates, f"{owner}: rates")
        if len(set(given)) != len(given):
            raise ValueError(
                f"{owner}: rates must be distinct. Received: rates={list(given)}"
            )
        ordered = tuple(sorted(given, reverse=True))
        probabilities = _per_rate(rate_probabilities, given, ordered, owner,
                                  "rate_probabilities")
        if rate_loss_weights is None and not distillation:
            # The narrow widths own only the first channels of every layer,
            # which the wide widths also pull on: an even sum leaves them
            # further behind models trained alone (benchmarks/accuracy.py).
            # Not under distillation: there heavier narrow rates would let
            # the soft targets outweigh the labels again.
            rate_loss_weights = [3.0 - 2.0 * r for r in given]
        loss_weights = _per_rate(rate_loss_weights, given, ordered, owner,
                                 "rate_loss_weights")
        if distillation not in _DISTILLATION_MODES:
            raise ValueError(
                f"{owner}: distillation must be one of {list(_DISTILLATION_MODES)}. "
                f"Received: distillation={distillation!r}"
            )
        if distillation and len(self.outputs) != 1:
            raise ValueError(
                f"{owner}: distillation='inplace' needs a single output. "
                f"Received: {len(self.outputs)} outputs"
            )
        if not 0.0 <= float(distillation_weight) <= 1.0:
            raise ValueError(
                f"{owner}: distillation_weight must be in [0, 1]. "
                f"Received: distillation_weight={distillation_weight!r}"
            )
        try:
            temperature = float(distillation_temperature)
        except (TypeError, ValueError):
            temperature = float("nan")
        if not (np.isfinite(temperature) and temperature > 0):
            raise ValueError(
                f"{owner}: distillation_temperature must be a positive number. "
                f"Received: distillation_temperature={distillation_temperature!r}"
            )
        if temperature != 1.0 and not distillation_from_logits:
            raise ValueError(
                f"{owner}: distillation_temperature needs logits "
                "(distillation_from_logits=True). Received: "
                f"distillation_temperature={distillation_temperature!r}"
            )
        if (
            isinstance(distillation_warmup, bool)
            or not isinstance(distillation_warmup, (int, np.integer))
            or distillation_warmup < 0
        ):
            raise ValueError(
                f"{owner}: distillation_warmup must be a non-negative integer "
                "(optimizer steps). Received: "
                f"distillation_warmup={distillation_warmup!r}"
            )
        for layer in self._flatten_layers(include_self=False, recursive=True):
            if isinstance(layer, SlicedBatchNormalization):
                for rate in ordered:
                    layer.row_of(rate)  # an undeclared rate fails here, clearly
        self._scheduler = schedulers_lib.get(scheduler, num_random, probabilities)
        self._scheduler.validate(ordered)
        self._num_slots = int(self._scheduler.num_rates(ordered))
        if self._num_slots < 1:
            raise ValueError(
                f"{owner}: the scheduler must run at least one rate per step. "
                f"Received: num_rates={self._num_slots}"
            )
        with tracking.DotNotTrackScope():
            self.rates = ordered
            self._rate_flags = [id(t) in rate_ids for t in self.inputs]
            self._loss_weights = loss_weights or [1.0] * len(ordered)
            self._at_rate_models = {}
            self._test_functions = {}
            self._rate_loss_trackers = []
            self._rate_compile_metrics = []
            self._slicing_config = {
                "rates": list(ordered),
                "scheduler": (
                    scheduler
                    if isinstance(scheduler, str)
                    else keras.saving.serialize_keras_object(self._scheduler)
                ),
                "num_random": num_random,
                "rate_probabilities": probabilities,
                "rate_loss_weights": loss_weights,
                "distillation": distillation,
                "distillation_weight": float(distillation_weight),
                "distillation_from_logits": bool(distillation_from_logits),
                "distillation_temperature": temperature,
                "distillation_warmup": int(distillation_warmup),
                "seed": seed,
            }
        self.distillation = distillation
        self.distillation_weight = float(distillation_weight)
        self.distillation_from_logits = bool(distillation_from_logits)
        self.distillation_temperature = temperature
        self.distillation_warmup = int(distillation_warmup)
        self._distillation_loss = keras.losses.CategoricalCrossentropy(
            from_logits=self.distillation_from_logits
        )
        self._static_rates = False
        self._eval_rate = 1.0
        self._seed_generator = keras.random.SeedGenerator(seed)
        # Not a model weight: it is training state that MinRateScheduler
        # sets every epoch, and it must not enter get_weights/set_weights.
        with tracking.DotNotTrackScope():
            self._min_rate = keras.Variable(
                0.0, dtype="float32", trainable=False, name="min_rate"
            )

    # ------------------------------------------------------------------ API

    @property
    def scheduler(self):
        """The `RateScheduler` that picks the rates of each training step."""
        return self._scheduler

    @property
    def min_rate(self):
        """Lower bound on the trained rates (0: none), read by every step.

        Rates below it are replaced by the narrowest allowed rate, so a
        schedule that lowers it over the epochs trains wide widths first
        (progressive shrinking); see `keras_slicing.callbacks.MinRateScheduler`.
        """
        return float(ops.convert_to_numpy(self._min_rate))

    @min_rate.setter
    def min_rate(self, value):
        value = float(value)
        if not 0.0 <= value <= self.rates[0]:
            raise ValueError(
                f"SlicingModel '{self.name}': min_rate must be in "
                f"[0, {self.rates[0]}] (0 means no bound). Received: "
                f"min_rate={value}"
            )
        self._min_rate.assign(value)

    def at_rate(self, rate):
        """A `keras.Model` of the data inputs alone running at `rate`.

        It shares this model's layers and weights, and the rate is a Python
        float, so every shape is static: use it to predict, evaluate, export
        (`model.at_rate(0.5).export(path)`) or convert one width. Models are
        cached per rate.
        """
        rate = rates_lib.validate_rate(rate, f"SlicingModel '{self.name}'.at_rate")
        if rate not in self._at_rate_models:
            sources = graph.data_inputs(self)
            inputs = [
                keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name)
                for t in sources
            ]
            outputs = graph.replay(
                self, rate, lambda layer, *a, **k: layer(*a, **k), inputs=inputs
            )
            label = rates_lib.format_rate(rate).replace(".", "_")
            self._at_rate_models[rate] = keras.Model(
                inputs[0] if len(inputs) == 1 else inputs,
                outputs,
                name=f"{self.name}_at_{label}",
            )
        return self._at_rate_models[rate]

    def evaluate_rates(
        self, x=None, y=None, rates=None, batch_size=None, sample_weight=None,
        steps=None, verbose=0,
    ):
        """Evaluates the compiled loss and metrics at each rate.

        Args:
            x, y, batch_size, sample_weight, steps, verbose: As in
                `evaluate` (data inputs only).
            rates: Rates to evaluate; defaults to `model.rates`.

        Returns:
            `{rate: {metric_name: value}}` with `loss` and the compiled
            metrics under their plain names.
        """
        rates = (
            self.rates
            if rates is None
            else rates_lib.validate_rates(rates, "evaluate_rates: rates")
        )
        results = {}
        previous = self._eval_rate
        try:
            for rate in rates:
                self._eval_rate = rate
                results[rate] = self.evaluate(
                    x, y, batch_size=batch_size, sample_weight=sample_weight,
                    steps=steps, verbose=verbose, return_dict=True,
                )
        finally:
            self._eval_rate = previous
        return results

    def evaluate(
        self, x=None, y=None, batch_size=None, verbose="auto",
        sample_weight=None, steps=None, callbacks=None, return_dict=False,
        **kwargs,
    ):
        """As `keras.Model.evaluate`, at full width (see `evaluate_rates`).

        Without `return_dict` the values come in `metrics_names` order.
        """
        logs = super().evaluate(
            self._with_rate_vectors(x), y, batch_size=batch_size,
            verbose=verbose, sample_weight=sample_weight, steps=steps,
            callbacks=callbacks, return_dict=True, **kwargs,
        )
        return logs if return_dict else self._in_metrics_order(logs)

    def test_on_batch(self, x, y=None, sample_weight=None, return_dict=False):
        logs = super().test_on_batch(
            self._with_rate_vectors(x), y, sample_weight=sample_weight,
            return_dict=True,
        )
        return logs if return_dict else self._in_metrics_order(logs)

    def predict(self, x, *args, **kwargs):
        return super().predict(self._with_rate_vectors(x), *args, **kwargs)

    @property
    def metrics_names(self):
        """The names of the values `evaluate` returns, in that order.

        The loss, then the compiled metrics (known once they are built, after
        the first `fit` or `evaluate`); the per-rate training entries of
        `fit` are not among them.
        """
        names = []
        for metric in super().metrics:
            if isinstance(metric, CompileMetrics):
                names += [m.name for m in metric.metrics]
            else:
                names.append(metric.name)
        return names

    def _in_metrics_order(self, logs):
        names = [n for n in self.metrics_names if n in logs]
        names += sorted(n for n in logs if n not in names)
        values = [logs[n] for n in names]
        return values[0] if len(values) == 1 else values

    # ------------------------------------------------------------- compile

    @tracking.no_automatic_dependency_tracking
    def compile(
        self,
        optimizer="rmsprop",
        loss=None,
        loss_weights=None,
        metrics=None,
        weighted_metrics=None,
        run_eagerly=False,
        steps_per_execution=1,
        jit_compile="auto",
        auto_scale_loss=True,
    ):
        """Configures training, as `keras.Model.compile`.

        `loss` is required. `metrics` are tracked per rate in training.

        `jit_compile=True` (XLA) cannot take the in-graph sampled rate: a
        tensor rate gives dynamic shapes, which XLA rejects. The model then
        samples the rates on the host each step (same scheduler and seed)
        and keeps one XLA-compiled step per distinct set of rates, in which
        every rate is a constant: a few compilations for the usual rate
        lists, then static shapes. `"auto"` resolves to `False` for sliced
        layers.
        """
        if loss is None:
            raise ValueError(
                f"SlicingModel '{self.name}': compile() needs a loss: the "
                "train step sums the compiled loss over the sampled rates. "
                "Received: loss=None"
            )
        static = jit_compile is True and not run_eagerly
        super().compile(
            optimizer=optimizer,
            loss=loss,
            loss_weights=loss_weights,
            metrics=metrics,
            weighted_metrics=weighted_metrics,
            run_eagerly=run_eagerly,
            steps_per_execution=steps_per_execution,
            jit_compile=False if static else jit_compile,
            auto_scale_loss=auto_scale_loss,
        )
        self._static_rates = static
        if static:
            # Keras refuses XLA for layers with supports_jit=False, which is
            # about tensor rates; this path feeds every layer a constant.
            self._jit_compile = True
            self._compile_config.config["jit_compile"] = True
        self._rate_loss_trackers = [
            keras.metrics.Mean(name=f"loss@{rates_lib.format_rate(r)}")
            for r in self.rates
        ]
        self._rate_compile_metrics = [
            CompileMetrics(metrics, weighted_metrics, output_names=self.output_names)
            if metrics is not None or weighted_metrics is not None
            else None
            for _ in self.rates
        ]
        self._test_functions = {}

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.optimizer is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    @property
    def metrics(self):
        # Unbuilt copies hold no state yet (and cannot report a result).
        per_rate = self._rate_loss_trackers + [
            m for m in self._rate_compile_metrics if m is not None and m.built
        ]
        return super().metrics + per_rate

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        # Under a distribution strategy Keras builds the compiled metrics
        # from symbolic outputs before the first step; the per-rate copies
        # are built at the same moment, outside the replicated step.
        self._build_metrics(y, y_pred)
        return super().compute_metrics(x, y, y_pred, sample_weight)

    def _build_metrics(self, y, y_pred):
        for metrics in (self._compile_metrics, *self._rate_compile_metrics):
            if metrics is not None and not metrics.built:
                metrics.build(y, y_pred)

    # --------------------------------------------------------------- steps

    def __call__(self, inputs, *args, **kwargs):
        if not self._has_rate(inputs):
            inputs = self._with_rate(inputs, 1.0)
        return super().__call__(self._with_rate_vectors(inputs), *args, **kwargs)

    def train_step(self, data):
        return self._train_step_on(self._sample_indices(), data)

    def test_step(self, data):
        return self._test_step_at(self._eval_rate, data)

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self._forward(x, 1.0, training=False)

    def make_train_function(self, force=False):
        if self.train_function is not None and not force:
            return self.train_function
        if self._static_rates:
            step = self._make_static_train_function()
        else:
            super().make_train_function(force)
            step = self.train_function

        def train_function(iterator):
            return self._run_rates_only(step(iterator))

        self.train_function = train_function
        return train_function

    def _make_static_train_function(self):
        functions = {}

        def train_function(iterator):
            key = self._host_indices()
            if key not in functions:
                functions[key] = self._make_function(
                    functools.partial(self._train_step_on, key)
                )
            return functions[key](iterator)

        return train_function

    def _run_rates_only(self, logs):
        """`logs` without the entries of rates not run yet this epoch.

        As Keras leaves `val_*` out of an epoch without validation: the
        progress bar, `History` and `EarlyStopping`/`ModelCheckpoint` see
        no value rather than a made-up one (the latter two skip the epoch).
        """
        unrun = tuple(
            "@" + rates_lib.format_rate(rate)
            for rate, tracker in zip(self.rates, self._rate_loss_trackers)
            if not float(ops.convert_to_numpy(tracker.count))
        )
        if not unrun or not isinstance(logs, dict):
            return logs
        return {k: v for k, v in logs.items() if not k.endswith(unrun)}

    def make_test_function(self, force=False):
        # One function per evaluated rate: the rate is a constant in it, so
        # shapes are static (and XLA can compile it).
        rate = self._eval_rate
        if force or rate not in self._test_functions:
            self._test_functions[rate] = self._make_function(
                functools.partial(self._test_step_at, rate)
            )
        self.test_function = self._test_functions[rate]
        return self.test_function

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras builds from a batch that it reduces across replicas as one
        # nested structure, which MultiWorkerMirroredStrategy refuses
        # ("unsupported type PerReplica"), so plain Keras 3 models cannot
        # fit under it. Only the shapes matter: one replica's part is enough.
        if self._distribute_strategy is None or iterator is None:
            return super()._maybe_symbolic_build(iterator, data_batch)
        for _, _, batches in iterator:
            data_batch = keras.tree.map_structure(
                lambda v: backend.first_replica(v, self.distribute_strategy),
                next(batches),
            )
            break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def _sample_indices(self):
        """Sorted indices into `rates` (widest first) for one step."""
        indices = ops.cast(
            self._scheduler.sample(self.rates, self._seed_generator), "int32"
        )
        indices = ops.reshape(indices, (self._num_slots,))
        rates = ops.convert_to_tensor(np.array(self.rates, "float32"))
        allowed = ops.sum(
            ops.cast(ops.greater_equal(rates, self._min_rate - 1e-6), "int32")
        )
        indices = ops.minimum(indices, ops.maximum(allowed - 1, 0))
        return ops.sort(indices)

    def _host_indices(self):
        indices = ops.convert_to_numpy(self._sample_indices())
        return tuple(sorted({int(i) for i in indices}))

    def _plan(self, indices):
        """`[(rate, loss weight, [hit per model rate])]`, widest first.

        Host-sampled indices (a tuple) give Python rates, flags and weights
        and run each distinct rate once; in-graph indices give tensors, and a
        repeated rate runs again with loss weight 0.
        """
        count = len(self.rates)
        if isinstance(indices, tuple):
            return [
                (self.rates[i], self._loss_weights[i], [j == i for j in range(count)])
                for i in indices
            ]
        rates = ops.convert_to_tensor(np.array(self.rates, "float32"))
        weights = ops.convert_to_tensor(np.array(self._loss_weights, "float32"))
        plan = []
        for k in range(self._num_slots):
            index = indices[k]
            fresh = ops.not_equal(index, indices[k - 1]) if k else None
            hits = [ops.equal(index, j) for j in range(count)]
            weight = ops.take(weights, index)
            if fresh is not None:
                hits = [ops.logical_and(hit, fresh) for hit in hits]
                weight = weight * ops.cast(fresh, "float32")
            plan.append((ops.take(rates, index), weight, hits))
        return plan

    def _train_step_on(self, indices, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if self._has_rate(x):
            raise ValueError(
                f"SlicingModel '{self.name}': fit samples the slice rates "
                "itself; pass only the data inputs, not the rate input."
            )
        plan = self._plan(indices)
        variables = self.trainable_weights

        def forward():
            total = ops.zeros((), "float32")
            teacher = None
            results = []
            share = self._student_share(plan) if self.distillation else None
            for k, (rate, weight, _) in enumerate(plan):
                y_pred = self._forward(x, rate, training=True)
                loss = self._compile_loss(y, y_pred, sample_weight)
                weight = ops.cast(weight, "float32")
                if self.distillation and k:
                    soft = self._distillation_term(teacher, y_pred, sample_weight)
                    a = self._current_distillation_weight()
                    loss = (1.0 - a) * loss + a * soft
                    weight = weight * share
                if k == 0:
                    teacher = ops.stop_gradient(y_pred)
                total = total + weight * loss
                results.append((y_pred, loss))
            # Regularizers count once per step, not once per rate.
            for extra in self.losses:
                total = total + self._aggregate_additional_loss(extra)
            return self.optimizer.scale_loss(total), (total, results)

        (total, results), gradients = backend.loss_and_gradients(forward, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))

        self._build_metrics(y, results[0][0])
        batch = ops.shape(keras.tree.flatten(x)[0])[0]
        self._loss_tracker.update_state(
            unscale_loss_for_distribution(total), sample_weight=batch
        )
        for j, (tracker, metrics) in enumerate(
            zip(self._rate_loss_trackers, self._rate_compile_metrics)
        ):
            hits = [hits[j] for _, _, hits in plan]
            self._update_rate_metrics(
                hits, results, tracker, metrics, y, sample_weight, batch
            )
        logs = {"loss": self._loss_tracker.result()}
        for rate, tracker, metrics in zip(
            self.rates, self._rate_loss_trackers, self._rate_compile_metrics
        ):
            # A rate not run yet this epoch has no value: NaN, never a
            # perfect 0 (fit leaves such entries out, see _run_rates_only).
            ran = ops.greater(tracker.count, 0.0)
            logs[tracker.name] = _where_ran(ran, tracker.result())
            if metrics is not None:
                suffix = "@" + rates_lib.format_rate(rate)
                for name, value in metrics.result().items():
                    logs[name + suffix] = _where_ran(ran, value)
        return self._reducible(logs)

    def _student_share(self, plan):
        """1 / the number of narrower rates that ran in this step.

        Summed, the soft-target terms of n narrower rates outweigh the one
        label term of the widest n to 1. The widths share their weights, so
        every step that moves a narrower rate towards the widest also moves
        the widest, and the chase (not the labels) then drives training: the
        widest rate drifts to worse than chance (digits, `"all"`: 63% at
        full width). Sharing one unit of weight keeps labels and soft targets
        balanced whatever the scheduler runs.
        """
        ran = [hits for _, _, hits in plan[1:]]
        if all(isinstance(hit, bool) for hits in ran for hit in hits):
            return 1.0 / max(sum(any(hits) for hits in ran), 1)
        ran = [functools.reduce(ops.logical_or, hits) for hits in ran]
        count = functools.reduce(ops.add, [ops.cast(r, "float32") for r in ran])
        return 1.0 / ops.maximum(count, 1.0)

    def _current_distillation_weight(self):
        weight = self.distillation_weight
        if not self.distillation_warmup:
            return weight
        done = ops.cast(self.optimizer.iterations, "float32")
        return weight * ops.minimum(done / float(self.distillation_warmup), 1.0)

    def _distillation_term(self, teacher, y_pred, sample_weight):
        teacher = ops.cast(teacher, "float32")
        if not self.distillation_from_logits:
            return self._distillation_loss(teacher, y_pred, sample_weight)
        t = self.distillation_temperature
        target = ops.softmax(teacher / t)
        soft = self._distillation_loss(target, ops.cast(y_pred, "float32") / t,
                                       sample_weight)
        return soft * (t * t)

    def _update_rate_metrics(
        self, hits, results, tracker, metrics, y, sample_weight, batch
    ):
        """Updates one rate's metrics from the slot that ran it, if any."""

        def update(y_pred, loss, weight):
            tracker.update_state(
                unscale_loss_for_distribution(loss), sample_weight=weight
            )
            if metrics is not None:
                metrics.update_state(y, y_pred, sample_weight)

        if all(isinstance(hit, bool) for hit in hits):
            for hit, (y_pred, loss) in zip(hits, results):
                if hit:
                    update(y_pred, loss, batch)
            return
        # At most one slot runs a given rate: select its outputs in the
        # graph, so that each rate needs one conditional update, not one per
        # slot (conditionals dominate the tracing time).
        ran = functools.reduce(ops.logical_or, hits)
        def select(*values):
            return functools.reduce(
                ops.add,
                [ops.where(h, v, ops.zeros_like(v)) for h, v in zip(hits, values)],
            )

        y_pred = keras.tree.map_structure(select, *[y_pred for y_pred, _ in results])
        loss = select(*[loss for _, loss in results])
        tracker.update_state(
            unscale_loss_for_distribution(loss),
            sample_weight=ops.cast(ran, "float32") * ops.cast(batch, "float32"),
        )
        if metrics is not None:
            ops.cond(
                ran,
                lambda: metrics.update_state(y, y_pred, sample_weight),
                lambda: None,
            )

    def _test_step_at(self, rate, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_pred = self._forward(x, rate, training=False)
        self._build_metrics(y, y_pred)
        loss = self._compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=False
        )
        self._loss_tracker.update_state(
            unscale_loss_for_distribution(loss),
            sample_weight=ops.shape(keras.tree.flatten(x)[0])[0],
        )
        logs = {"loss": self._loss_tracker.result()}
        if self._compile_metrics is not None:
            self._compile_metrics.update_state(y, y_pred, sample_weight)
            logs.update(self._compile_metrics.result())
        for metric in self._compile_loss.metrics if self._compile_loss else ():
            logs[metric.name] = metric.result()
        return self._reducible(logs)

    def _reducible(self, logs):
        # Across workers Keras reduces every log value along axis 0, which a
        # scalar lacks (plain Keras 3 models fail there); the reduction
        # removes the axis added here again.
        if backend.is_multi_worker(self.distribute_strategy):
            return {name: ops.expand_dims(value, 0) for name, value in logs.items()}
        return logs

    # ------------------------------------------------------------- helpers

    def _has_rate(self, inputs):
        return len(keras.tree.flatten(inputs)) == len(self._rate_flags)

    def _with_rate(self, inputs, rate):
        """The model inputs with every rate input set to `rate`."""
        data = keras.tree.flatten(inputs)
        if len(data) != self._rate_flags.count(False):
            raise ValueError(
                f"SlicingModel '{self.name}': expected "
                f"{self._rate_flags.count(False)} data input(s), optionally "
                f"with the rate ({len(self._rate_flags)} in all). Received "
                f"{len(data)} input(s)."
            )
        if any(isinstance(t, keras.KerasTensor) for t in data):
            raise ValueError(
                f"SlicingModel '{self.name}': called on symbolic tensors "
                "without a rate. Pass the rate input too: model([x, rate])."
            )
        data = [ops.convert_to_tensor(t) for t in data]
        batch = ops.shape(data[0])[0]
        vector = ops.ones((batch,), "float32") * ops.cast(rate, "float32")
        data = iter(data)
        return [vector if is_rate else next(data) for is_rate in self._rate_flags]

    def _with_rate_vectors(self, inputs):
        """Fed rates of shape `()` or `(N, 1)` as the `(N,)` vectors expected."""
        if not isinstance(inputs, (list, tuple)) or not self._has_rate(inputs):
            return inputs
        flat = keras.tree.flatten(inputs)
        rates = [t for t, is_rate in zip(flat, self._rate_flags) if is_rate]
        if all(len(getattr(t, "shape", ())) == 1 for t in rates):
            return inputs  # already vectors (or symbolic: left to the layers)
        data = [t for t, is_rate in zip(flat, self._rate_flags) if not is_rate]
        batch = getattr(data[0], "shape", (None,))[0] if data else 1
        if batch is None:
            return inputs
        return [
            rates_lib.rate_vector(t, batch, f"SlicingModel '{self.name}'")
            if is_rate else t
            for t, is_rate in zip(flat, self._rate_flags)
        ]

    def _forward(self, x, rate, training):
        if self._has_rate(x):
            return self(x, training=training)
        if isinstance(rate, float):
            flat = keras.tree.flatten(x)
            return self.at_rate(rate)(
                flat[0] if len(flat) == 1 else flat, training=training
            )
        return self(self._with_rate(x, rate), training=training)

    # ---------------------------------------------------------- serialize

    def save_own_variables(self, store):
        super().save_own_variables(store)
        # The sampler's position is saved too, so that a fit resumed from a
        # checkpoint (BackupAndRestore) draws the rates an uninterrupted fit
        # would have drawn. It is not a weight: get_weights() leaves it out.
        store[_SEED_KEY] = ops.convert_to_numpy(self._seed_generator.state)

    def load_own_variables(self, store):
        keys = list(store.keys())
        if _SEED_KEY in keys:
            self._seed_generator.state.assign(np.asarray(store[_SEED_KEY]))
        super().load_own_variables({k: store[k] for k in keys if k != _SEED_KEY})

    def get_config(self):
        # The functional part is what a plain Functional model over the same
        # graph writes; Keras only writes it for functional-like __init__s.
        functional = keras.Model(self.input, self.output, name=self.name)
        return {
            **functional.get_config(),
            "trainable": self.trainable,
            **self._slicing_config,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        slicing = {key: config.pop(key) for key in _SLICING_ARGS if key in config}
        trainable = config.get("trainable", True)
        functional = keras.Model.from_config(config, custom_objects=custom_objects)
        model = cls(
            functional.input, functional.output, name=functional.name, **slicing
        )
        model.trainable = trainable
        return model


def _per_rate(values, given, ordered, owner, arg_name):
    """`values` (one per given rate, or a dict) reordered widest first."""
    if values is None:
        return None
    received = values
    if isinstance(values, dict):
        try:
            by_rate = {
                rates_lib.validate_rate(r, owner): float(v) for r, v in values.items()
            }
        except (TypeError, ValueError):
            by_rate = {}
        values = [by_rate[r] for r in given] if set(by_rate) == set(given) else []
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        values = []
    if len(values) != len(given) or any(not np.isfinite(v) or v < 0 for v in values):
        raise ValueError(
            f"{owner}: {arg_name} needs one finite non-negative number per "
            f"rate of rates={list(given)} (a list in that order, or a dict "
            f"rate -> number). Received: {arg_name}={received!r}"
        )
    position = {r: i for i, r in enumerate(given)}
    return [values[position[r]] for r in ordered]


def _where_ran(ran, value):
    value = ops.convert_to_tensor(value)
    return ops.where(ran, value, ops.full_like(value, float("nan")))
