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
