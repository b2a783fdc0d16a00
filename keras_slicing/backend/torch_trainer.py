"""How `SlicingModel` trains on PyTorch.

PyTorch runs eagerly, so each step's rates are sampled on the host and reach
the layers as Python floats: every slice is a view of known size, with no
device-to-host read of a rate tensor. `torch.compile` is not used
(`compile(jit_compile=True)` is ignored with a warning): the widths' forward
passes under its `"aot_eager"` backend compiled for about 50 s each and ran
at 0.96x eager at full width and 1.9x at r = 0.25 in one run, 0.7x at r = 0.25
in another (`benchmarks/torch_compile.py`), and the `random_min_max` step
with them was slower than eager; eager is the reliable choice on a CPU.
"""

import torch


class SlicingTrainer:
    """The PyTorch part of `SlicingModel`'s steps (a mixin of it)."""

    def train_step(self, data):
        return self._train_step_on(self._host_indices(), data)

    def make_train_function(self, force=False):
        if self.train_function is not None and not force:
            return self.train_function
        _check_one_step_per_execution(self)

        def train_function(data):
            key = self._host_indices()
            return self._run_rates_only(self._train_step_on(key, data[0]), ran=key)

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

    def _loss_and_gradients(self, loss_fn, variables):
        for variable in variables:
            variable.value.grad = None
        loss, aux = loss_fn()
        loss.backward()
        return aux, [variable.value.grad for variable in variables]

    def _apply_gradients(self, gradients, variables):
        with torch.no_grad():
            self.optimizer.apply_gradients(zip(gradients, variables))


def _check_one_step_per_execution(model):
    if model.steps_per_execution > 1:
        raise ValueError(
            f"SlicingModel '{model.name}': steps_per_execution must be 1 with "
            "the PyTorch backend, as for any Keras model there. Received: "
            f"steps_per_execution={model.steps_per_execution}"
        )
