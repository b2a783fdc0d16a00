"""The private Keras API keras-slicing relies on, in one place.

Keras 3.15 has no public equivalent of these; each import says why it is
needed. Importing them here (and nowhere else) makes a Keras upgrade that
moves one fail at import, in this file.

Besides these imports, `SlicingModel` is a `keras.Model` subclass that
overrides or calls trainer methods Keras documents only in its source:
- `_make_function` (TensorFlow and JAX trainers): wraps one step into the
  function `fit`/`evaluate` call, with `steps_per_execution` and
  `tf.function`/XLA handled as for any Keras model;
- `_maybe_symbolic_build`/`_symbolic_build` (TensorFlow): building from one
  replica's batch under `MultiWorkerMirroredStrategy`;
- `_get_state_sharding_spec` (JAX): the output shardings of a compiled step
  under `keras.distribution`, as Keras' own step uses;
- `_compile_loss`, `_compute_loss`, `_loss_tracker`, `_compile_metrics`,
  `_aggregate_additional_loss`: the compiled loss and metrics a custom step
  reuses so that `compile` arguments keep their Keras meaning.
"""

import sys

# The loss tracker must undo the per-replica loss scaling of
# `tf.distribute`, as Keras' own train step does (identity elsewhere).
from keras.src.losses.loss import unscale_loss_for_distribution  # noqa: F401

# The per-rate copies of the compiled metrics reuse Keras' resolution of
# names such as "accuracy" against the model's outputs and loss.
from keras.src.trainers.compile_utils import CompileMetrics  # noqa: F401

# Training state that must not become a tracked weight (the rate sampler,
# the per-rate metric lists): `DotNotTrackScope` and
# `no_automatic_dependency_tracking`.
from keras.src.utils import tracking  # noqa: F401


def in_symbolic_scope():
    """Whether Keras is inferring shapes (`compute_output_spec`), not running.

    Keras' JAX and PyTorch backends infer shapes by tracing `call` with
    abstract or meta tensors, which hold no rate to read.
    """
    try:
        from keras.src.backend.common.symbolic_scope import in_symbolic_scope
    except ImportError:  # moved in a later Keras: assume a real run
        return False
    return in_symbolic_scope()


def calling_functional_model():
    """The outermost functional model whose `call` runs now, or None.

    A layer cannot see the model it runs in: Keras passes it tensors, not
    graph nodes, and the JAX trainer enters a model through `stateless_call`
    without a call context. Every backend and trainer runs a functional
    graph through `Functional.call` (a `Sequential` through its inner
    functional model), so the stack tells which model a sliced layer's
    first call belongs to; `keras_slicing.checks` checks that model once.
    """
    found = None
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is _FUNCTIONAL_CALL:
            model = frame.f_locals.get("self")
            if model is not None:
                found = model
        frame = frame.f_back
    return found


try:
    from keras.src.models.functional import Functional as _Functional

    _FUNCTIONAL_CALL = _Functional.call.__code__
except (ImportError, AttributeError):  # moved in a later Keras: no lazy check
    _FUNCTIONAL_CALL = None


def without_call_arguments(error):
    """Keeps Keras from appending the call's arguments to `error`'s message.

    Each layer call an error passes through appends "Arguments received by
    ...", with numpy inputs printed in full: thousands of characters that
    bury a rate or model error whose own message already names what is
    wrong. Keras skips an error that carries this mark.
    """
    error._keras_call_info_injected = True
    return error
