"""Rates fed with a model's inputs, validated on the host before anything runs.

A rate input (`keras_slicing.rate_input()`) takes one rate per example, all
equal. `fed_rate_vectors` is the one check of rates fed that way: numeric,
in (0, 1], one value, of shape `()`, `(N,)` or `(N, 1)`; its errors name the
entry point and the rate input. `SlicingModel` runs it in its own
`predict`, `evaluate`, `*_on_batch` and `__call__` (`rate_inputs.py`).

A plain functional model (`keras.Model([x, rate], y)`) has no such methods
of its own, and on TensorFlow its compiled `predict`, `evaluate` and `fit`
see the rate only as a tensor in a graph. `guard` gives one the same check:
it puts, on that model instance alone, `fit`, `evaluate`, `predict`,
`train_on_batch`, `test_on_batch` and `predict_on_batch` methods that check
the host data first and then run Keras' own. `keras_slicing.check_model`
guards the model it passes, which includes the model a sliced layer's first
run finds (`checks.check_called_model`); that first run, already inside
Keras' method, checks the data of the call under way with
`check_running_call`. Data whose values are not on the host (a
`tf.data.Dataset`, a generator, a `PyDataset`) are left to the checks in the
layers (an assertion in the graph on TensorFlow).
"""

import types
import weakref

from keras_slicing import graph
from keras_slicing import keras_internals
from keras_slicing import rates as rates_lib

# Keras' methods that take the model inputs as their argument `x`.
ENTRY_POINTS = keras_internals.DATA_ENTRY_POINTS

# Guarded models and which of their inputs are rates.
_RATE_FLAGS = weakref.WeakKeyDictionary()


def fed_rate_vectors(model, inputs, flags, method):
    """`inputs` with each fed rate as an `(N,)` vector, validated when known.

    `inputs` are the model's flat inputs and `flags` tell which are rates.
    A rate known now (a number, an array, an eager tensor) must be numeric,
    in (0, 1], one value for all examples and of shape `()`, `(N,)` or
    `(N, 1)`, N being the leading size of the first data input; the error
    names `model`, `method` and the rate input. A rate of another shape
    than `(N,)` is replaced by a numpy vector; symbolic rates, and inputs
    whose batch size is unknown, are returned as they are.
    """
    data = [t for t, is_rate in zip(inputs, flags) if not is_rate]
    shape = tuple(getattr(data[0], "shape", (None,))) if data else (1,)
    batch = shape[0] if shape else None
    if batch is None:
        return list(inputs)
    label = "SlicingModel" if _validates_itself(model) else "Model"
    names = iter(t.name for t, is_rate in zip(model.inputs, flags) if is_rate)
    vectors = []
    for t, is_rate in zip(inputs, flags):
        if is_rate:
            owner = f"{label} '{model.name}'.{method}, input '{next(names)}'"
            vector = rates_lib.rate_vector(t, batch, owner)
            if tuple(getattr(t, "shape", ())) != (batch,):
                t = vector
        vectors.append(t)
    return vectors


def guard(model):
    """Makes `model`'s data entry points check fed rates on the host first.

    Only this instance changes, and only if it has a rate input and does
    not check its rates itself (`SlicingModel`); the methods put on it are
    bound to it, so a copy of the model (`copy.deepcopy`) checks its own.
    """
    if model in _RATE_FLAGS or _validates_itself(model):
        return
    rate_ids = {id(t) for t in graph.rate_inputs(model)}
    if not rate_ids:
        return
    _RATE_FLAGS[model] = [id(t) in rate_ids for t in model.inputs]
    for method in ENTRY_POINTS:
        # Not the model's own `__setattr__`: a method is no state to track.
        object.__setattr__(model, method, types.MethodType(_GUARDS[method], model))


def check_running_call(model):
    """Checks the data of the entry point of guarded `model` running now.

    For the first run of a model, found by its sliced layers inside Keras'
    `predict`, `evaluate` or `fit` (before the guard was put on it): on
    TensorFlow this runs while the step is traced, before any graph runs.
    """
    if model not in _RATE_FLAGS:
        return
    running = keras_internals.calling_entry_point(model)
    if running is not None:
        method, x = running
        check_fed_rates(model, x, method)


def check_fed_rates(model, x, method):
    """Refuses rates in the inputs `x` of guarded `model` that are wrong now."""
    flags = _RATE_FLAGS.get(model)
    if flags is None:
        return
    if isinstance(x, dict):
        names = [t.name for t in model.inputs]
        if set(x) != set(names):
            return
        x = [x[name] for name in names]
    if not isinstance(x, (list, tuple)) or len(x) != len(flags):
        return
    fed_rate_vectors(model, x, flags, method)


def _validates_itself(model):
    return getattr(type(model), "validates_fed_rates", False)


def _guarded(method):
    def run(self, *args, **kwargs):
        x = args[0] if args else kwargs.get("x")
        try:
            check_fed_rates(self, x, method)
            validation = kwargs.get("validation_data") if method == "fit" else None
            if isinstance(validation, (list, tuple)) and validation:
                check_fed_rates(self, validation[0], "fit (validation_data)")
        except ValueError as error:
            raise keras_internals.without_call_arguments(error) from None
        return getattr(type(self), method)(self, *args, **kwargs)

    run.__name__ = run.__qualname__ = method
    run.__doc__ = (
        f"`keras.Model.{method}`, with fed slice rates checked on the host "
        "first (see `keras_slicing.fed_rates`)."
    )
    return run


_GUARDS = {method: _guarded(method) for method in ENTRY_POINTS}
