"""How `SlicingModel` trains on TensorFlow.

The step is traced once by `tf.function` with the rates sampled inside the
graph: a rate is a tensor, the layers compute their widths in the graph, and
one trace serves every rate. XLA (`jit_compile=True`) cannot take those
dynamic shapes, so there the rates are sampled on the host and each distinct
set of rates gets its own compiled step with static shapes. So does a
scheduler that runs every rate in every step (`"all"`): its one set needs
one step, and static shapes trace and run faster than tensor rates (whose
dynamic shapes made the first step cost more than tracing every width as a
plain Keras model; benchmarks/first_step.py).
"""

import functools

import keras
import tensorflow as tf
from keras import ops

from keras_slicing import schedulers
from keras_slicing import tf_internals


class SlicingTrainer:
    """The TensorFlow part of `SlicingModel`'s steps (a mixin of it)."""

    def train_step(self, data):
        return self._train_step_on(self._sample_indices(), data)

    def make_train_function(self, force=False):
        if self.train_function is not None and not force:
            return self.train_function
        self._prepare_step_scales()
        if self._host_sampled or _runs_every_rate(self):
            # Filled as steps are compiled; `compiled_rate_sets` reads it.
            steps = self._compiled_rate_sets
            steps.clear()

            def train_function(iterator):
                key = self._host_indices()
                if key not in steps:
                    steps[key] = self._make_function(
                        functools.partial(self._train_step_on, key)
                    )
                return self._run_rates_only(steps[key](iterator), ran=key)

        else:
            super().make_train_function(force)
            step = self.train_function

            def train_function(iterator):
                return self._run_rates_only(step(iterator))

        self.train_function = train_function
        return train_function

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

    def _loss_and_gradients(self, loss_fn, variables):
        with tf.GradientTape() as tape:
            loss, aux = loss_fn()
        return aux, tape.gradient(loss, variables)

    def _apply_gradients(self, gradients, variables):
        self.optimizer.apply_gradients(zip(gradients, variables))

    def _reducible(self, logs):
        # Across workers Keras reduces every log value along axis 0, which a
        # scalar lacks (plain Keras 3 models fail there); the reduction
        # removes the axis added here again.
        if tf_internals.in_multi_worker_mode(self.distribute_strategy):
            return {name: ops.expand_dims(value, 0) for name, value in logs.items()}
        return logs

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras builds from a batch that it reduces across replicas as one
        # nested structure, which MultiWorkerMirroredStrategy refuses
        # ("unsupported type PerReplica"), so plain Keras 3 models cannot
        # fit under it. Only the shapes matter: one replica's part is enough.
        if self._distribute_strategy is None:
            # Keras defers building the optimizer and compiled metrics to
            # the first trace of the step; the variables they create there
            # make tf.function trace the whole step a second time. Built
            # here from the shapes of the data, the step is traced once.
            if data_batch is None and iterator is not None:
                data_batch = _batch_spec(iterator)
            if data_batch is not None:
                self._symbolic_build(data_batch=data_batch)
            return
        if iterator is None:
            return super()._maybe_symbolic_build(iterator, data_batch)
        for _, _, batches in iterator:
            data_batch = keras.tree.map_structure(
                lambda v: _first_replica(v, self.distribute_strategy),
                next(batches),
            )
            break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)


def _batch_spec(iterator):
    """Shapes and dtypes of the batches of a Keras epoch iterator, or None.

    Read from the dataset's `element_spec`: no batch is consumed (a
    generator would lose it).
    """
    for _, _, batches in iterator:
        spec = getattr(batches, "element_spec", None)
        break
    else:
        return None
    if spec is None:
        return None
    return keras.tree.map_structure(
        lambda s: keras.KerasTensor(tuple(s.shape), s.dtype.name), spec
    )


def _runs_every_rate(model):
    """Whether every step of `model` runs all of its rates: one fixed set."""
    scheduler = model.scheduler
    # Random draws are distinct, so drawing as many as there are rates
    # draws them all; other schedulers may repeat or leave out a rate.
    known = isinstance(scheduler, (schedulers.AllScheduler, schedulers.RandomScheduler))
    return known and model._num_slots == len(model.rates)


def _first_replica(value, strategy):
    """The first local replica's part of a distributed value, else `value`."""
    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)[0]
    return value
