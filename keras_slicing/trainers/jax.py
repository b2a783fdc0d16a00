"""How `SlicingModel` trains on JAX.

A traced rate cannot size a slice, so the rates of each step are sampled on
the host, before the step runs, and each distinct set of rates gets its own
`jax.jit`-compiled step in which every rate is a constant. The scheduler
bounds how many sets exist (`"random_min_max"` over 4 rates: 2; `"all"`: 1;
`"random"` with `num_random=1`: 4), so a run compiles at most that many train
steps, once each, plus one test step per evaluated rate;
`model.compiled_rate_sets` lists them.

Keras' JAX trainer passes the model's state (trainable, non-trainable,
optimizer and metric variables) into a step and takes the new state out. The
step itself is the same `keras.ops` code as on the other backends, run in a
`keras.StatelessScope` that maps every variable to its value in that state;
the gradient is taken by `jax.value_and_grad` over the trainable values.
"""

import functools

import jax
import keras


class SlicingTrainer:
    """The JAX part of `SlicingModel`'s steps (a mixin of it)."""

    def train_step(self, state, data):
        return self._stateless_train_step(self._host_indices(), state, data)

    def test_step(self, state, data):
        return self._stateless_test_step(self._eval_rate, state, data)

    def predict_step(self, state, data):
        variables = [self.trainable_variables, self.non_trainable_variables]
        outputs, (_, non_trainable) = _run_stateless(
            lambda: self._predict_outputs(data), variables, state
        )
        return outputs, non_trainable

    def make_train_function(self, force=False):
        if self.train_function is not None and not force:
            return self.train_function
        self._prepare_step_scales()
        for rate in self.rates:
            self._at_rate(rate)  # built once here, not inside a trace
        out_shardings = None
        if keras.distribution.distribution() is not None:
            out_shardings = (None, self._get_state_sharding_spec())
        # Filled as steps are compiled; `compiled_rate_sets` reads it.
        steps = self._compiled_rate_sets
        steps.clear()

        def train_function(state, iterator):
            key = self._host_indices()
            if key not in steps:
                step = functools.partial(self._stateless_train_step, key)
                if self.jit_compile:
                    step = jax.jit(step, donate_argnums=0, out_shardings=out_shardings)
                steps[key] = self._make_function(step)
            logs, state = steps[key](state, iterator)
            return self._run_rates_only(logs, ran=key), state

        self.train_function = train_function
        return train_function

    def make_test_function(self, force=False):
        rate = self._eval_rate
        if force or rate not in self._test_functions:
            self._at_rate(rate)
            step = functools.partial(self._stateless_test_step, rate)
            if self.jit_compile:
                step = jax.jit(step)
            self._test_functions[rate] = self._make_function(step)
        self.test_function = self._test_functions[rate]
        return self.test_function

    def _stateless_train_step(self, indices, state, data):
        variables = [
            self.trainable_variables,
            self.non_trainable_variables,
            self.optimizer.variables,
            self.metrics_variables,
        ]
        return _run_stateless(
            lambda: self._train_step_on(indices, data), variables, state
        )

    def _stateless_test_step(self, rate, state, data):
        variables = [
            self.trainable_variables,
            self.non_trainable_variables,
            self.metrics_variables,
        ]
        return _run_stateless(
            lambda: self._test_step_at(rate, data), variables, state
        )

    def _loss_and_gradients(self, loss_fn, variables):
        # Runs inside the step's StatelessScope: `value` reads the state.
        # The inner scope maps the trainable variables to the arguments of
        # the differentiated function and every other variable of the step
        # to its current value; what the forward pass assigns (statistics,
        # seeds) is passed on to the step's scope.
        trainable = {id(v) for v in variables}
        others = [v for v in self._step_state_variables() if id(v) not in trainable]
        other_values = [v.value for v in others]

        def loss_of(values):
            mapping = list(zip(variables, values)) + list(zip(others, other_values))
            with keras.StatelessScope(state_mapping=mapping) as scope:
                loss, aux = loss_fn()
            return loss, (aux, [scope.get_current_value(v) for v in others])

        (_, (aux, updates)), gradients = jax.value_and_grad(loss_of, has_aux=True)(
            [v.value for v in variables]
        )
        for variable, value in zip(others, updates):
            if value is not None:
                variable.assign(value)
        return aux, gradients

    def _apply_gradients(self, gradients, variables):
        self.optimizer.apply_gradients(zip(gradients, variables))


def _run_stateless(fn, variables, state):
    """Runs `fn()` with `variables` (groups) holding `state` (same groups).

    Returns `(fn's result, new state)`: every variable `fn` assigned gets
    its new value, every other one keeps its value in `state`.
    """
    mapping = [
        (variable, value)
        for group, values in zip(variables, state)
        for variable, value in zip(group, values)
    ]
    with keras.StatelessScope(state_mapping=mapping) as scope:
        result = fn()
    new_state = tuple(
        [
            _current(scope, variable, value)
            for variable, value in zip(group, values)
        ]
        for group, values in zip(variables, state)
    )
    return result, new_state


def _current(scope, variable, value):
    new = scope.get_current_value(variable)
    return value if new is None else new
