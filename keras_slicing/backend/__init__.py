"""Backend-specific pieces of slicing: one small module per Keras backend.

Everything else in the package is written with `keras.ops`; what depends on
the backend is how a rate whose value is not known yet becomes a width (a
graph computation on TensorFlow; an error on JAX and PyTorch, whose shapes
must be known when they run) and the slicing ops a width runs with, in
`<backend>.py`. How `SlicingModel` trains on each backend is another matter,
in `keras_slicing/trainers/`, which the layers never import. The module of
the active backend is imported alone, so `import keras_slicing` on JAX or
PyTorch does not import TensorFlow.
"""

import keras

from keras_slicing.backend import common

BACKEND = keras.backend.backend()

if BACKEND == "tensorflow":
    from keras_slicing.backend import tensorflow as _impl
elif BACKEND == "jax":
    from keras_slicing.backend import jax as _impl
elif BACKEND == "torch":
    from keras_slicing.backend import torch as _impl
else:
    raise ImportError(
        "keras_slicing runs on the 'tensorflow', 'jax' and 'torch' Keras "
        f"backends. Received: KERAS_BACKEND={BACKEND!r}"
    )

# The interface every backend module implements.
concrete_rate = _impl.concrete_rate
concrete_value = _impl.concrete_value
rate_of_values = common.rate_of_values
in_shape_inference = common.in_shape_inference
tensor_rate_groups = _impl.tensor_rate_groups
dim = _impl.dim
assert_true = _impl.assert_true
is_tracing = _impl.is_tracing
leading_slice = _impl.leading_slice
fused_group_norm = _impl.fused_group_norm
channels_last_conv = _impl.channels_last_conv
# Rates sampled on the host before each training step (a set of rates per
# compiled step) rather than inside it: JAX and PyTorch always, TensorFlow
# under XLA.
HOST_SAMPLED_RATES = BACKEND in ("jax", "torch")

if BACKEND == "tensorflow":
    # TensorFlow only: used by its tests and the graph-mode rate path.
    checked_rate_scalar = _impl.checked_rate_scalar
    groups_from_rate_scalar = _impl.groups_from_rate_scalar
    ensure_dynamic_shapes_allowed = _impl.ensure_dynamic_shapes_allowed
    per_rate_tensor = _impl.per_rate_tensor
