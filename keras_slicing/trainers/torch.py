"""How `SlicingModel` trains on PyTorch.

PyTorch runs eagerly, so each step's rates are sampled on the host and reach
the layers as Python floats: every slice is a view of known size, with no
device-to-host read of a rate tensor.

With `compile(jit_compile=True)` each width's forward pass is captured once,
on its first step, by `torch.compile` with its `"eager"` backend: Dynamo
records the width's ATen ops and replays them without the Python work of
Keras' layer calls, and the ops themselves are PyTorch's own kernels, the
ones an uncompiled step runs. The `"aot_eager"` backend (decomposed ops)
ran slower on a CPU (`benchmarks/torch_compile.py`). `dynamic=False` makes
the rate and the shapes constants of each width's graph; numpy batches
become tensors once per step, before any width runs. Either left out breaks
the graph at every layer, and the layers then run one by one, slower than
uncompiled. The loss, the backward pass and the update stay uncompiled, so
the captured graphs are only the widths'.
"""

import types

import keras
import numpy as np
import torch


class SlicingTrainer:
    """The PyTorch part of `SlicingModel`'s steps (a mixin of it)."""

    def train_step(self, data):
        return self._train_step_on(self._host_indices(), data)

    def make_train_function(self, force=False):
        if self.train_function is not None and not force:
            return self.train_function
        self._prepare_step_scales()
        _check_one_step_per_execution(self)

        def train_function(data):
            key = self._host_indices()
            # train_on_batch hands numpy arrays through: one conversion per
            # step instead of one per width, and no numpy reaches a width
            # captured by torch.compile (Dynamo breaks the graph on it).
            batch = keras.tree.map_structure(_as_tensor, data[0])
            return self._run_rates_only(self._train_step_on(key, batch), ran=key)

        self.train_function = train_function
        return train_function

    def make_test_function(self, force=False):
        rate = self._eval_rate
        if force or rate not in self._test_functions:
            _check_one_step_per_execution(self)

            def test_function(data):
                with torch.no_grad():
                    return self._test_step_at(rate, data[0])

            self._test_functions[rate] = test_function
        self.test_function = self._test_functions[rate]
        return self.test_function

    def _width_forward(self, rate):
        if self._compiled_widths is None:
            return self._at_rate(rate)
        if rate not in self._compiled_widths:
            width = self._at_rate(rate)

            def forward(inputs, training=False):
                return width(inputs, training=training)

            # Each width is its own function object with its own cache, so
            # the widths do not count against one another's recompile limit.
            forward = types.FunctionType(
                forward.__code__.replace(), forward.__globals__,
                closure=forward.__closure__,
            )
            self._compiled_widths[rate] = torch.compile(
                forward, backend="eager", dynamic=False
            )
        return self._compiled_widths[rate]

    def _teacher_outputs(self, x):
        # No autograd record of the teacher's forward pass.
        with torch.no_grad():
            return super()._teacher_outputs(x)

    def _loss_and_gradients(self, loss_fn, variables):
        for variable in variables:
            variable.value.grad = None
        loss, aux = loss_fn()
        loss.backward()
        return aux, [variable.value.grad for variable in variables]

    def _apply_step(self, gradients, variables):
        # The update and the step scaling that follows it (parameters are
        # leaves of autograd, assigned in place).
        with torch.no_grad():
            super()._apply_step(gradients, variables)

    def _apply_gradients(self, gradients, variables):
        self.optimizer.apply_gradients(zip(gradients, variables))


def _as_tensor(value):
    return keras.ops.convert_to_tensor(value) if isinstance(value, np.ndarray) else value


def _check_one_step_per_execution(model):
    if model.steps_per_execution > 1:
        raise ValueError(
            f"SlicingModel '{model.name}': steps_per_execution must be 1 with "
            "the PyTorch backend, as for any Keras model there. Received: "
            f"steps_per_execution={model.steps_per_execution}"
        )
