"""The training and test steps of `SlicingModel`, written once.

A step is plain `keras.ops` code run against the model's variables: the plan
of the step's rates, the forward passes and their summed loss, one optimizer
update, and the per-rate metrics. What differs between backends (how the
gradient is taken, how the step is compiled and fed its state) lives in the
trainer module of each backend (`keras_slicing/trainers/<backend>.py`), which
runs these methods.

The rates of a step come as indices into `model.rates` (widest first):
either a tuple of Python ints sampled on the host (every backend; the only
way on JAX and PyTorch, whose shapes must be known when a step runs), or an
int32 tensor sampled inside a TensorFlow graph (one trace for every rate).
"""

import functools

import keras
import numpy as np
from absl import logging
from keras import ops

from keras_slicing import backend
from keras_slicing import rates as rates_lib
from keras_slicing import step_scales
from keras_slicing import keras_internals
from keras_slicing.keras_internals import unscale_loss_for_distribution


class SlicingTrainStep:
    """The backend-neutral steps of `SlicingModel` (a mixin of it)."""

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
        # The narrowest rate of each entry (a mixed configuration's narrowest
        # group): entries below min_rate run the narrowest allowed rate.
        narrowest = ops.convert_to_tensor(np.array(
            list(self.rates)
            + [min(c.rates.values()) for c, _, _ in self._step_configs],
            "float32",
        ))
        indices = ops.where(
            ops.greater_equal(ops.take(narrowest, indices), self._min_rate - 1e-6),
            indices,
            ops.maximum(allowed - 1, 0),
        )
        return ops.sort(indices)

    def _host_indices(self):
        indices = ops.convert_to_numpy(self._sample_indices())
        indices = tuple(sorted({int(i) for i in indices}))
        for i in indices:
            if i >= len(self.rates):
                # Built here, on the host, not inside a step's trace.
                self._at_rate(self._step_configs[i - len(self.rates)][1])
        return indices

    def _plan(self, indices):
        """`[(rate, loss weight, [hit per model rate])]`, widest first.

        Host-sampled indices (a tuple) give Python rates, flags and weights
        and run each distinct rate once; in-graph indices give tensors, and a
        repeated rate runs again with loss weight 0.
        """
        count = len(self.rates)
        if isinstance(indices, tuple):
            # Indices from count on run mixed configurations (LayerRates),
            # which no per-rate metric counts.
            return [
                (self.rates[i], self._loss_weights[i], [j == i for j in range(count)])
                if i < count else
                self._step_configs[i - count][1:] + ([False] * count,)
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

    def _width_forward(self, rate):
        """The callable that runs the data inputs at the Python-float `rate`."""
        return self._at_rate(rate)

    def _train_step_on(self, indices, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if self._has_rate(x):
            raise ValueError(
                f"SlicingModel '{self.name}': fit samples the slice rates "
                "itself; pass only the data inputs, not the rate input."
            )
        plan = self._plan(indices)
        variables = self.trainable_weights
        compiled_loss = keras_internals.compiled_loss(self)
        distillation = self._distillation
        teacher = None
        if distillation.teacher is not None:
            # Once per step, for every rate: the frozen teacher's predictions.
            teacher = self._teacher_outputs(x)

        def forward():
            total = ops.zeros((), "float32")
            widest = None
            results = []
            share = self._student_share(plan) if distillation.inplace else None
            for k, (rate, weight, _) in enumerate(plan):
                self._report_tracing(x, f"width {k + 1}/{len(plan)}", rate)
                y_pred = self._forward(x, rate, training=True)
                loss = compiled_loss(y, y_pred, sample_weight)
                weight = ops.cast(weight, "float32")
                # Every rate learns from a teacher; in place, every rate
                # narrower than the step's widest learns from that one.
                target = teacher if teacher is not None else (
                    widest if distillation.inplace and k else None
                )
                if target is not None:
                    soft = distillation.soft_target_loss(target, y_pred, sample_weight)
                    a = distillation.weight_at(self.optimizer.iterations)
                    loss = (1.0 - a) * loss + a * soft
                if share is not None and k:
                    weight = weight * share
                if k == 0:
                    widest = ops.stop_gradient(y_pred)
                total = total + weight * loss
                results.append((y_pred, loss))
            self._report_tracing(x, "the gradients and the update")
            # Regularizers count once per step, not once per rate.
            for extra in self.losses:
                total = total + self._aggregate_additional_loss(extra)
            return self.optimizer.scale_loss(total), (total, results)

        (total, results), gradients = self._loss_and_gradients(forward, variables)
        self._apply_step(gradients, variables)

        self._build_metrics(y, results[0][0])
        batch = ops.shape(keras.tree.flatten(x)[0])[0]
        loss_tracker = keras_internals.loss_tracker(self)
        loss_tracker.update_state(
            unscale_loss_for_distribution(total), sample_weight=batch
        )
        for j, (tracker, metrics) in enumerate(
            zip(self._rate_loss_trackers, self._rate_compile_metrics)
        ):
            hits = [hits[j] for _, _, hits in plan]
            self._update_rate_metrics(
                hits, results, tracker, metrics, y, sample_weight, batch
            )
        logs = {"loss": loss_tracker.result()}
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

    def _report_tracing(self, x, stage, rate=None):
        """A line per width while fit's step is traced, if fit is verbose.

        Tracing a deep model's step can take minutes on a CPU before fit
        shows its progress bar; these lines say how far it got.
        """
        if not self._trace_progress or not backend.is_tracing(keras.tree.flatten(x)[0]):
            return
        if isinstance(rate, float):
            stage += f" (rate {rates_lib.format_rate(rate)})"
        message = f"Tracing the training step of '{self.name}': {stage}"
        if keras.config.is_interactive_logging_enabled():
            print(message, flush=True)
        else:
            logging.info(message)

    def _teacher_outputs(self, x):
        """The teacher's detached predictions of the data inputs `x`."""
        flat = keras.tree.flatten(x)
        outputs = self._distillation.teacher(
            flat[0] if len(flat) == 1 else flat, training=False
        )
        return ops.stop_gradient(keras.tree.flatten(outputs)[0])

    def _student_share(self, plan):
        """1 / the number of narrower rates that ran in this step.

        Summed, the soft-target terms of n narrower rates outweigh the one
        label term of the widest n to 1. The widths share their weights, so
        every step that moves a narrower rate towards the widest also moves
        the widest, and the chase (not the labels) then drives training: the
        widest rate drifts to worse than chance (a test pins it on digits).
        Sharing one unit of weight keeps labels and soft targets
        balanced whatever the scheduler runs.
        """
        ran = [hits for _, _, hits in plan[1:]]
        if all(isinstance(hit, bool) for hits in ran for hit in hits):
            return 1.0 / max(sum(any(hits) for hits in ran), 1)
        ran = [functools.reduce(ops.logical_or, hits) for hits in ran]
        count = functools.reduce(ops.add, [ops.cast(r, "float32") for r in ran])
        return 1.0 / ops.maximum(count, 1.0)

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
        loss = self.compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=False
        )
        loss_tracker = keras_internals.loss_tracker(self)
        loss_tracker.update_state(
            unscale_loss_for_distribution(loss),
            sample_weight=ops.shape(keras.tree.flatten(x)[0])[0],
        )
        logs = {"loss": loss_tracker.result()}
        metrics = keras_internals.compiled_metrics(self)
        if metrics is not None:
            metrics.update_state(y, y_pred, sample_weight)
            logs.update(metrics.result())
        compiled_loss = keras_internals.compiled_loss(self)
        for metric in compiled_loss.metrics if compiled_loss else ():
            logs[metric.name] = metric.result()
        return self._reducible(logs)

    def _reducible(self, logs):
        """`logs` as the trainer reduces them (TensorFlow overrides this)."""
        return logs

    # The stateful steps of Keras' TensorFlow and PyTorch trainers; JAX's
    # trainer runs the same methods statelessly.
    def test_step(self, data):
        return self._test_step_at(self._eval_rate, data)

    def _apply_step(self, gradients, variables):
        """The optimizer update, each weight's step scaled per width if set."""
        scales = self._element_step_scales
        if not scales:
            self._apply_gradients(gradients, variables)
            return
        step_scales.apply_scaled(self._apply_gradients, gradients, variables, scales)

    def _prepare_step_scales(self):
        """Computes the per-element step scales once, as a train function is made."""
        self._element_step_scales = (
            None if self._rate_step_scales is None
            else step_scales.element_scales(self, self._rate_step_scales)
        )

    def predict_step(self, data):
        return self._predict_outputs(data)

    def _predict_outputs(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self._forward(x, 1.0, training=False)

    def _step_state_variables(self):
        """Every variable a step's forward pass may read or update.

        The model's own (weights, statistics, layers' seeds) and the
        optimizer's (its iteration count sets the distillation warm-up, its
        loss scale the scaled loss): what a stateless backend must feed in.
        """
        return list(self.variables) + list(self.optimizer.variables)

    def _run_rates_only(self, logs, ran=None):
        """`logs` without the entries of rates not run yet this epoch.

        As Keras leaves `val_*` out of an epoch without validation: the
        progress bar, `History` and `EarlyStopping`/`ModelCheckpoint` see
        no value rather than a made-up one (the latter two skip the epoch).
        `ran` holds the indices of the rates just run when they were sampled
        on the host; the rates run this epoch are then known without
        reading the trackers (which JAX holds in its training state).
        """
        if ran is None:
            counts = [float(ops.convert_to_numpy(t.count)) for t in self._rate_loss_trackers]
            run = {i for i, count in enumerate(counts) if count}
        else:
            self._rates_run.update(ran)
            run = self._rates_run
        unrun = tuple(
            "@" + rates_lib.format_rate(rate)
            for i, rate in enumerate(self.rates)
            if i not in run
        )
        if not unrun or not isinstance(logs, dict):
            return logs
        return {k: v for k, v in logs.items() if not k.endswith(unrun)}

    def reset_metrics(self):
        super().reset_metrics()
        self._rates_run = set()


def _where_ran(ran, value):
    value = ops.convert_to_tensor(value)
    return ops.where(ran, value, ops.full_like(value, float("nan")))
