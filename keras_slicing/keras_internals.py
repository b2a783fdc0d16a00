"""The private Keras API keras-slicing relies on, in one place.

Keras has no public equivalent of these; each says why it is needed. Every
name is imported or checked when this module is imported, so a Keras release
that moves one fails at `import keras_slicing`, here, naming the Keras
version, instead of misbehaving later. No use has a fallback.

Public routes taken instead where Keras offers one: `compute_loss` (the test
step), `compute_metrics`, `keras.Model.layers`. Not taken:
`keras.models.clone_model(call_function=...)` replays a graph too, but it
builds and compiles a model of the same class from the new outputs, which a
`SlicingModel` whose rate input is bound to a number refuses (no rate input
left), and it cannot replay shapes alone (`graph.layer_shapes`).

Besides the functions below, `SlicingModel`'s trainer mixins
(`keras_slicing/trainers/`) override or call trainer methods Keras documents
only in its source; they are checked here for the active backend:
- `_make_function` (TensorFlow and JAX): wraps one step into the function
  `fit`/`evaluate` call, with `steps_per_execution` and `tf.function`/XLA
  handled as for any Keras model;
- `_maybe_symbolic_build`/`_symbolic_build` and `_distribute_strategy`
  (TensorFlow): building from one replica's batch under
  `MultiWorkerMirroredStrategy`;
- `_get_state_sharding_spec` (JAX): the output shardings of a compiled step
  under `keras.distribution`, as Keras' own step uses;
- `_aggregate_additional_loss` (every backend): regularization and
  `add_loss` terms summed as Keras' own step sums them.
"""

import inspect
import sys

import keras

# The loss tracker must undo the per-replica loss scaling of
# `tf.distribute`, as Keras' own train step does (identity elsewhere).
from keras.src.losses.loss import unscale_loss_for_distribution  # noqa: F401

# A functional model's graph: `SlicingModel` and `extract_submodel` replay it
# with the rate input bound to a number.
from keras.src.models.functional import Functional
from keras.src.ops.function import Function
from keras.src.ops.node import Node
from keras.src.ops.operation import Operation

# The per-rate copies of the compiled metrics reuse Keras' resolution of
# names such as "accuracy" against the model's outputs and loss.
from keras.src.trainers.compile_utils import CompileMetrics  # noqa: F401
from keras.src.trainers.trainer import Trainer

# A Keras mask travels as a tensor attribute, which some backends' tensors
# cannot hold: Keras then keeps it aside. Reading it is how a layer that does
# not support masks refuses one.
from keras.src.backend.common.masking import get_keras_mask as keras_mask  # noqa: F401

# Keras' JAX and PyTorch backends infer shapes by tracing `call` with
# abstract or meta tensors, which hold no rate to read; this tells a real run
# from that tracing.
from keras.src.backend.common.symbolic_scope import in_symbolic_scope  # noqa: F401

# ConvNeXt's per-channel scale `x * gamma` (`keras.applications.ConvNeXt*`)
# has no public class: `slice_model` converts it by its exact class, and a
# cut width holds it again.
from keras.src.applications.convnext import LayerScale  # noqa: F401

# InceptionResNetV2's residual merge `x + scale * branch`, elementwise like
# `Add`, has no public class either: `check_model` and `slice_model` treat
# it as a merge.
from keras.src.applications.inception_resnet_v2 import CustomScaleLayer  # noqa: F401

# Training state that must not become a tracked weight (the rate sampler,
# the per-rate metric lists): `DotNotTrackScope` and
# `no_automatic_dependency_tracking`.
from keras.src.utils import tracking  # noqa: F401


def _moved(what):
    return ImportError(
        f"keras_slicing relies on {what}, which keras {keras.__version__} "
        "does not have (it was written against Keras 3.5 to 3.15). Install "
        "a Keras version in that range, or a keras_slicing release that "
        f"supports keras {keras.__version__}."
    )


def _require_methods(owner, names):
    for name in names:
        if not callable(getattr(owner, name, None)):
            raise _moved(f"the method {owner.__name__}.{name}")


def _require_assigned(function, names):
    """Checks that `function` sets the attributes `names` (its bytecode)."""
    assigned = set(inspect.unwrap(function).__code__.co_names)
    for name in names:
        if name not in assigned:
            raise _moved(f"the attribute {name} set in {function.__qualname__}")


_require_methods(Functional, ["_run_through_graph"])
_require_methods(keras.layers.Layer, ["_flatten_layers"])
_require_assigned(Function.__init__, ["_nodes_by_depth"])
_require_assigned(Operation.__init__, ["_inbound_nodes"])
_require_assigned(Node.__init__, ["_keras_history"])
_require_assigned(Trainer.__init__, ["_compile_loss", "_compile_metrics", "_loss_tracker"])
_require_assigned(
    Trainer.compile, ["train_function", "test_function", "predict_function"]
)
_require_methods(keras.Model, ["_aggregate_additional_loss"])
_TRAINER_METHODS = {
    "tensorflow": ["_make_function", "_maybe_symbolic_build", "_symbolic_build"],
    "jax": ["_make_function", "_get_state_sharding_spec"],
    "torch": [],
}
_require_methods(keras.Model, _TRAINER_METHODS.get(keras.backend.backend(), []))
if keras.backend.backend() == "tensorflow":
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    _require_assigned(TensorFlowTrainer.__init__, ["_distribute_strategy"])


# The methods of a model that take its inputs, as their first argument `x`.
# A plain model with a rate input checks the rates fed to them on the host
# (`keras_slicing.fed_rates`); its first run reads the `x` of the one running.
DATA_ENTRY_POINTS = (
    "fit", "evaluate", "predict", "train_on_batch", "test_on_batch",
    "predict_on_batch",
)


def _first_argument(method):
    parameters = list(inspect.signature(inspect.unwrap(method)).parameters)
    return parameters[1] if len(parameters) > 1 else None


for _name in DATA_ENTRY_POINTS:
    if _first_argument(getattr(keras.Model, _name)) != "x":
        raise _moved(f"keras.Model.{_name} taking the model inputs as `x`")


def is_functional(layer):
    """Whether `layer` is a functional model, whose graph can be replayed."""
    return isinstance(layer, Functional)


def inbound_nodes(layer):
    """The nodes of `layer`'s calls in functional graphs (how a rate reaches it)."""
    return layer._inbound_nodes


def nodes_by_depth(model):
    """`{depth: [node]}` of a functional model, the outputs at depth 0."""
    return model._nodes_by_depth


def run_through_graph(model, inputs, call_fn):
    """`model`'s graph run on `inputs`, each node computed by `call_fn`.

    `call_fn(operation, *args, **kwargs)` returns the node's outputs; the
    operations are `model`'s own (not cloned).
    """
    return model._run_through_graph(
        inputs, operation_fn=lambda operation: operation, call_fn=call_fn
    )


def all_sublayers(layer):
    """Every layer inside `layer`, nested models and layers' own layers too.

    `keras.Model.layers` lists the top level only; a sliced layer may sit in
    a nested model or inside a custom layer.
    """
    return list(layer._flatten_layers(include_self=False, recursive=True))


def producer(tensor):
    """The operation whose call returned the symbolic `tensor`, or `None`."""
    history = getattr(tensor, "_keras_history", None)
    return None if history is None else history.operation


def compiled_loss(model):
    """The loss `compile` set up, without regularizers: a step adds those once.

    Called as `compiled_loss(model)(y, y_pred, sample_weight)`; `None` when
    the model was compiled without a loss.
    """
    return model._compile_loss


def compiled_metrics(model):
    """The metrics `compile` set up (`CompileMetrics`), or `None`."""
    return model._compile_metrics


def loss_tracker(model):
    """The `Mean` that reports `loss` in the logs of `fit` and `evaluate`."""
    return model._loss_tracker


# A sliced layer's first run checks the model it runs in: every backend and
# trainer runs a functional graph through `Functional.call`.
_FUNCTIONAL_CALL = Functional.call.__code__


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


def calling_entry_point(model):
    """`(method, x)` of the innermost `model.<method>(x, ...)` running now.

    `method` is one of `DATA_ENTRY_POINTS`; None when none of them runs (an
    eager call, a function of the user's). A sliced layer's first run inside
    a compiled `predict`, `evaluate` or `fit` sees the rate as a symbolic
    tensor while the step is traced; the host data are the `x` of Keras'
    method further up the stack (after `fit` set aside its
    `validation_split`).
    """
    methods = {
        inspect.unwrap(getattr(type(model), name)).__code__: name
        for name in DATA_ENTRY_POINTS
    }
    frame = sys._getframe(1)
    while frame is not None:
        name = methods.get(frame.f_code)
        if name is not None and frame.f_locals.get("self") is model:
            return name, frame.f_locals.get("x")
        frame = frame.f_back
    return None


def forget_compiled_functions(model):
    """Makes `model`'s next `fit`, `evaluate` or `predict` build a new step.

    Keras keeps each step function once built; one whose first trace raised
    cannot be traced again on TensorFlow ("Creating variables on a non-first
    call to a function decorated with tf.function"). Keras' `compile`
    clears the same attributes.
    """
    model.train_function = None
    model.test_function = None
    model.predict_function = None


def without_call_arguments(error):
    """Keeps Keras from appending the call's arguments to `error`'s message.

    Each layer call an error passes through appends "Arguments received by
    ...", with numpy inputs printed in full: thousands of characters that
    bury a rate or model error whose own message already names what is
    wrong. Keras skips an error that carries this mark.
    """
    error._keras_call_info_injected = True
    return error
