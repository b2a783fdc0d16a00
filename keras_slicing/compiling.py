"""How `SlicingModel` compiles, and the per-rate metrics it compiles.

`compile` settles how the training steps will run (rates sampled inside one
traced step, or on the host with a compiled step per set of rates) and makes
one copy of the loss tracker and of the compiled metrics per rate; `metrics`,
`metrics_names` and `compute_metrics` build and report those copies beside
Keras' own. This is the model's side of Keras' `Trainer.compile`, apart from
`model.py`, which says what the model is: the steps that update the metrics
are `keras_slicing/train_step.py`, and how each backend compiles them is in
`keras_slicing/trainers/`, which fill `_compiled_rate_sets`.

It reads `rates`, set up by `SlicingModel`.
"""


import keras

from keras_slicing import backend
from keras_slicing import keras_internals
from keras_slicing import rates as rates_lib
from keras_slicing.keras_internals import CompileMetrics
from keras_slicing.keras_internals import tracking


class SlicingCompile:
    """The compile step and per-rate metrics of `SlicingModel` (a mixin of it)."""

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

        The rates of a step are sampled inside the compiled step on
        TensorFlow (a tensor rate, one trace for every rate), except under a
        scheduler that runs every rate in every step (`"all"`), whose one
        set of rates runs with static shapes, which trace and run faster.
        Where shapes must be static, they are sampled on the host before
        each step (same scheduler and seed) and each distinct set of rates
        gets its own step, in which every rate is a constant:
        - TensorFlow with `jit_compile=True` (XLA rejects the dynamic shapes
          of a tensor rate): one XLA-compiled step per set of rates;
        - JAX, always: one `jax.jit`-compiled step per set of rates
          (`jit_compile` `"auto"` or `True`), or eager steps with
          `jit_compile=False`;
        - PyTorch, always: eager steps, or with `jit_compile=True` each
          width's forward pass captured once by `torch.compile` with its
          `"eager"` backend (the backward pass and the update stay
          uncompiled). It removes the Python work of running the layers
          for a capture of tens of seconds per rate; see docs/backends.md
          for when it pays.
        The usual schedulers give a few sets (`"random_min_max"` over four
        rates: two), listed in `compiled_rate_sets` once they ran.
        """
        if loss is None:
            raise ValueError(
                f"SlicingModel '{self.name}': compile() needs a loss: the "
                "train step sums the compiled loss over the sampled rates. "
                "Received: loss=None"
            )
        jit = jit_compile is True or (jit_compile == "auto" and backend.BACKEND == "jax")
        jit = jit and not run_eagerly
        # PyTorch compiles the widths' forward passes only (see above), not
        # Keras' whole predict or test function.
        self._compiled_widths = {} if jit and backend.BACKEND == "torch" else None
        if self._compiled_widths is not None:
            jit = False
        # Mixed width configurations (MixedWidthScheduler) run at Python
        # rates per layer: sampled on the host on every backend.
        host_sampled = backend.HOST_SAMPLED_RATES or jit or bool(self._step_configs)
        super().compile(
            optimizer=optimizer,
            loss=loss,
            loss_weights=loss_weights,
            metrics=metrics,
            weighted_metrics=weighted_metrics,
            run_eagerly=run_eagerly,
            steps_per_execution=steps_per_execution,
            jit_compile=False if host_sampled else jit_compile,
            auto_scale_loss=auto_scale_loss,
        )
        self._host_sampled = host_sampled
        self._compiled_rate_sets = {}
        if host_sampled:
            # Keras refuses XLA for layers with supports_jit=False, which is
            # about tensor rates; this path feeds every layer a constant.
            self._jit_compile = jit
            if jit_compile is True:
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
    def compiled_rate_sets(self):
        """The sets of rates that have their own compiled training step.

        Where the rates are sampled on the host and steps are compiled (JAX;
        TensorFlow with `jit_compile=True` or the `"all"` scheduler), each
        distinct set of rates a step ran gets one compiled step, built
        once: a tuple of rates per entry, widest first, then the
        `WidthConfig`s of mixed configurations (`MixedWidthScheduler`).
        Empty where one traced step serves every rate (TensorFlow's random
        schedulers) and where steps run eagerly (PyTorch).
        """
        return [
            tuple(
                self.rates[i] if i < len(self.rates)
                else self._step_configs[i - len(self.rates)][0]
                for i in key
            )
            for key in self._compiled_rate_sets
        ]

    @property
    def metrics(self):
        # Unbuilt copies hold no state yet (and cannot report a result).
        per_rate = self._rate_loss_trackers + [
            m for m in self._rate_compile_metrics if m is not None and m.built
        ]
        return super().metrics + per_rate

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

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        # Under a distribution strategy Keras builds the compiled metrics
        # from symbolic outputs before the first step; the per-rate copies
        # are built at the same moment, outside the replicated step.
        self._build_metrics(y, y_pred)
        return super().compute_metrics(x, y, y_pred, sample_weight)

    def _build_metrics(self, y, y_pred):
        compiled = keras_internals.compiled_metrics(self)
        for metrics in (compiled, *self._rate_compile_metrics):
            if metrics is not None and not metrics.built:
                metrics.build(y, y_pred)

    def _in_metrics_order(self, logs):
        """`logs` as `evaluate` returns them without `return_dict`."""
        names = [n for n in self.metrics_names if n in logs]
        names += sorted(n for n in logs if n not in names)
        values = [logs[n] for n in names]
        return values[0] if len(values) == 1 else values
