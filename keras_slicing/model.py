"""`SlicingModel`: what the model is and the API it adds to `keras.Model`.

This module holds its rates, scheduler and distillation settings, the plain
models of one width (`at_rate`), `evaluate_rates` and saving; the rest of its
behaviour is in mixins of their own: `compiling.py` (`compile` and the per-rate
metrics), `rate_inputs.py` (inputs fed with the rate or without it),
`train_step.py` (the steps) and `trainers/` (how each backend
takes gradients and compiles the steps).
"""

import inspect

import keras
import numpy as np
from keras import ops

from keras_slicing import calibration
from keras_slicing import checks
from keras_slicing import graph
from keras_slicing import keras_internals
from keras_slicing import mixed_widths
from keras_slicing import rates as rates_lib
from keras_slicing import schedulers as schedulers_lib
from keras_slicing import widths
from keras_slicing.compiling import SlicingCompile
from keras_slicing.distillation import Distillation
from keras_slicing.keras_internals import tracking
from keras_slicing.layers.batch_normalization import SlicedBatchNormalization
from keras_slicing.rate_inputs import SlicingRateInputs
from keras_slicing.train_step import SlicingTrainStep
from keras_slicing.trainers import SlicingTrainer

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
_SEED_KEY = "rate_sampler_state"


@keras.saving.register_keras_serializable(package="keras_slicing")
class SlicingModel(
    SlicingTrainer,
    SlicingTrainStep,
    SlicingCompile,
    SlicingRateInputs,
    keras.Model,
):
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
            it came closest to models trained alone, width by width, in the
            cross-validation of `benchmarks/accuracy.py` (measured in
            docs/benchmarks.md).
        num_random: Number of randomly drawn rates of a named random
            scheduler; when fewer rates are left, all of them run, and
            `"all"` ignores it. Defaults to 1.
        rate_probabilities: Optional sampling weights of a named random
            scheduler, one per entry of `rates` (or a dict rate -> weight).
        rate_loss_weights: Optional weights of the per-rate losses in the
            sum, one per entry of `rates` (or a dict rate -> weight).
            Defaults to `3 - 2 * r` for rate `r`: 1 at full width, 2.5 at
            0.25. In cross-validation on digits and MNIST-1D an even sum,
            heavier narrow widths and in-place distillation did no better
            (docs/benchmarks.md). Pass
            `[1.0] * len(rates)` for an even sum. With `distillation` the
            default is 1 for every rate.
        distillation: `None`, `"inplace"`, or a teacher `keras.Model`.
            `"inplace"` is in-place distillation as in Universally Slimmable
            Networks: the widest rate of the step learns from the labels,
            every narrower rate from `(1 - distillation_weight) * label_loss
            + distillation_weight * CE(softmax(widest), narrower)`, the
            widest predictions detached. The narrower rates of a step share
            the weight of one rate: with `n` of them, each term counts `1/n`
            (times its `rate_loss_weights` entry), so with even weights the
            labels keep half the say.
            A `keras.Model` is a frozen teacher, typically the trained model
            this one was converted from (`keras_slicing.slice_model`): it
            runs once per step on the batch's data inputs, in inference mode
            (`training=False`: its batch norm uses its moving statistics,
            its dropout is off), and every rate, the widest included,
            learns from `(1 - distillation_weight) * label_loss +
            distillation_weight * CE(softmax(teacher), rate)`. Its weights
            never change and must not be shared with this model (a
            `ValueError` says so); it must predict what this model predicts.
            The teacher is not part of the model: neither among its weights
            nor saved in its `.keras` file, whose config records
            `distillation=None` (a loaded model trains on labels alone; to
            go on distilling, build `SlicingModel(loaded.inputs,
            loaded.outputs, distillation=teacher, ...)`). On JAX the
            teacher's weights are constants of each compiled step.
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
        if rate_loss_weights is None and distillation is None:
            # The narrow widths own only the first channels of every layer,
            # which the wide widths also pull on: an even sum leaves them
            # further behind models trained alone (benchmarks/accuracy.py).
            # Not under distillation: there heavier narrow rates would let
            # the soft targets outweigh the labels again.
            rate_loss_weights = [3.0 - 2.0 * r for r in given]
        loss_weights = _per_rate(rate_loss_weights, given, ordered, owner,
                                 "rate_loss_weights")
        settings = Distillation(
            owner, self, distillation, distillation_weight,
            distillation_from_logits, distillation_temperature, distillation_warmup,
        )
        for layer in keras_internals.all_sublayers(self):
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
            # Per-width step scales (`_set_rate_step_scales`), and the
            # per-element scales a train function computes from them.
            self._rate_step_scales = None
            self._element_step_scales = None
            self._at_rate_models = {}
            self._compiled_widths = None  # PyTorch with jit_compile=True
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
                # A teacher is a model of its own, not saved with this one.
                "distillation": None if settings.teacher else settings.mode,
                "distillation_weight": settings.weight,
                "distillation_from_logits": settings.from_logits,
                "distillation_temperature": settings.temperature,
                "distillation_warmup": settings.warmup,
                "seed": seed,
            }
            self._distillation = settings
        with tracking.DotNotTrackScope():
            # The teacher is no part of this model: not a sublayer, its
            # variables neither trained nor saved.
            self.distillation = settings.teacher or settings.mode
        self.distillation_weight = settings.weight
        self.distillation_from_logits = settings.from_logits
        self.distillation_temperature = settings.temperature
        self.distillation_warmup = settings.warmup
        with tracking.DotNotTrackScope():
            # Step index len(rates) + k runs entry k (MixedWidthScheduler).
            self._step_configs = tuple(
                mixed_widths.step_configurations(self, self._scheduler)
            )
        self._host_sampled = False
        self._eval_rate = 1.0
        self._trace_progress = False  # fit's verbose, for tracing its step
        # Training state, not weights: the rate sampler (saved with the
        # model, see save_own_variables) and the bound MinRateScheduler sets
        # every epoch. Neither enters get_weights/set_weights nor the state
        # JAX passes through its compiled steps (the rates of a step are
        # sampled before it runs there).
        with tracking.DotNotTrackScope():
            self._seed_generator = keras.random.SeedGenerator(seed)
            self._rates_run = set()
            self._compiled_rate_sets = {}
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
        cached per rate. Warns (`StaleStatisticsWarning`) when the width's
        batch-norm statistics were not computed for the current weights.

        `rate` may also be a width configuration (a
        `keras_slicing.WidthConfig` or a dict `{group: rate}`, see
        `keras_slicing.width_groups`): each group then runs at its own rate.
        """
        rate = widths.resolve(self, rate, f"SlicingModel '{self.name}'.at_rate")
        calibration.warn_if_stale(self, rate)
        return self._at_rate(rate)

    def _at_rate(self, rate):
        """`at_rate` for the steps, which need no check of the statistics."""
        key = rate if not isinstance(rate, graph.LayerRates) else rate.label
        if key not in self._at_rate_models:
            sources = graph.data_inputs(self)
            inputs = [
                keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name)
                for t in sources
            ]
            outputs = graph.replay(
                self, rate, lambda layer, *a, **k: layer(*a, **k), inputs=inputs
            )
            label = graph.describe_rate(rate).replace(".", "_")
            self._at_rate_models[key] = keras.Model(
                inputs[0] if len(inputs) == 1 else inputs,
                outputs,
                name=f"{self.name}_at_{label}",
            )
        return self._at_rate_models[key]

    def _set_rate_step_scales(self, scales):
        """Scales each weight's optimizer step by its narrowest width.

        `scales` holds one non-negative number per rate of `rates` (a list
        widest first, or a dict rate -> scale), or None (no scaling): every
        element of a trainable weight has its step multiplied by the scale
        of the narrowest rate whose width uses it (`keras_slicing.step_scales`).
        Applies from the next train function made.
        """
        self._rate_step_scales = _per_rate(
            scales, self.rates, self.rates, f"SlicingModel '{self.name}'",
            "rate_step_scales",
        )
        self.train_function = None

    def fit(
        self, x=None, y=None, *args, calibrate_batchnorm=True,
        calibration_steps=None, **kwargs,
    ):
        """As `keras.Model.fit`, then recomputes batch-norm statistics.

        During training each `SlicedBatchNormalization` keeps moving
        averages of its rows, which lag behind weights that keep changing
        (by tens of points of accuracy on small data sets; see the
        fine-tuning page of the docs). When training ends, every declared width's
        statistics are recomputed from the training data
        (`keras_slicing.calibrate_batchnorm`, the post-training statistics
        of Slimmable Networks), so that `evaluate`, `predict`,
        `extract_submodel` and `export_tflite` use statistics of the final
        weights. Models without batch norm are unaffected.

        Validation during `fit` (`validation_data`, `SlicedValidation`)
        still sees the moving averages, and warns once
        (`StaleStatisticsWarning`).

        Tracing the training step of a deep model can take minutes on a
        CPU before Keras' progress bar appears: unless `verbose=0`, a line
        per width says how far it got (through absl logging when Keras'
        interactive logging is off).

        Args:
            x, y, *args, **kwargs: As in `keras.Model.fit`.
            calibrate_batchnorm: Whether to recompute the statistics at the
                end. `False` leaves the moving averages, marked stale:
                evaluating or predicting with them warns, and extracting or
                exporting a width refuses them, until
                `keras_slicing.calibrate_batchnorm` runs. Defaults to `True`.
            calibration_steps: Number of training batches to calibrate
                from. Defaults to `None`: batches of 2,048 examples in all
                (every example of smaller arrays), the US-Nets setting. Array
                data is sampled evenly (a fixed seed), at fit's `batch_size`,
                leaving out a `validation_split`; a dataset or generator is
                read from its start again (a generator: the batches it yields
                next; Keras may have read some ahead). A generator with
                nothing left warns and leaves the rows stale.

        Returns:
            The `History` of `keras.Model.fit`.
        """
        if calibration_steps is not None and (
            isinstance(calibration_steps, bool)
            or not isinstance(calibration_steps, (int, np.integer))
            or calibration_steps < 1
        ):
            raise ValueError(
                f"SlicingModel '{self.name}': calibration_steps must be a "
                "positive integer (batches) or None (2,048 examples). "
                f"Received: calibration_steps={calibration_steps!r}"
            )
        layers = calibration.batchnorm_layers(self)
        for layer in layers:
            layer.mark_stale()
        given = inspect.signature(super().fit).bind(x, y, *args, **kwargs)
        self._trace_progress = given.arguments.get("verbose", "auto") != 0
        try:
            history = super().fit(x, y, *args, **kwargs)
        finally:
            self._trace_progress = False
        if calibrate_batchnorm and layers:
            calibration.calibrate_after_fit(
                self, x,
                batch_size=given.arguments.get("batch_size"),
                validation_split=given.arguments.get("validation_split", 0.0),
                steps=calibration_steps,
            )
        return history

    def train_on_batch(self, *args, **kwargs):
        # The step changes the weights every statistics row was computed for.
        for layer in calibration.batchnorm_layers(self):
            layer.mark_stale()
        return super().train_on_batch(*args, **kwargs)

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
        for rate in rates:
            with self._evaluating_at(rate):
                results[rate] = self.evaluate(
                    x, y, batch_size=batch_size, sample_weight=sample_weight,
                    steps=steps, verbose=verbose, return_dict=True,
                )
        return results

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

