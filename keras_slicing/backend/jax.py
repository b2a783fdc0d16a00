"""Slicing on the JAX backend.

JAX compiles one function per shape, so the width must be known when a
function is traced: a rate that is a Python float, a numpy value or a
concrete array slices; a traced rate (an argument of `jax.jit`, or the rate
input of a model run by a compiled `fit`/`predict`) is refused. Pass the rate
as a static value instead (one compiled function per width).
"""

import jax
import numpy as np

from keras_slicing.backend import common

_TRACED = (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError)


def concrete_rate(rate, owner):
    """The rate as a Python float when it is known now, else None."""
    value = common.host_rate(rate, owner)
    if value is not None:
        return value
    if isinstance(rate, jax.Array):
        try:
            values = np.asarray(rate)
        except _TRACED:
            return None
        return common.rate_of_values(values, owner)
    return None


def is_tracing(tensor):
    """Whether `tensor` is traced by `jax.jit` (abstract, no value yet)."""
    return isinstance(tensor, jax.core.Tracer)


def concrete_value(value):
    """A number, numpy value or concrete array as a numpy array, else None."""
    array = common.host_array(value)
    if array is not None or not isinstance(value, jax.Array):
        return array
    try:
        return np.asarray(value)
    except _TRACED:
        return None


def tensor_rate_groups(rate, slice_groups, owner):
    """Refuses a traced rate: it cannot size a slice under JAX.

    Keras' own shape inference (e.g. before `fit`) traces every input; there
    a rate stands for full width, as in the layers' `compute_output_shape`.
    """
    if common.in_shape_inference():
        return slice_groups
    raise ValueError(
        f"{owner}: under the JAX backend the slice rate must be known when "
        "the function is traced, since it sets the shapes of the computation. "
        f"Received a traced rate: {rate!r}. Pass a Python float (e.g. "
        "`layer(x, rate=0.5)`, a static argument of jax.jit), or run a model "
        "with a rate input eagerly (`model.compile(jit_compile=False)`)."
    )


def dim(x, axis):
    """Size of `x` along `axis` (shapes are static under JAX)."""
    return x.shape[axis]


assert_true = common.eager_assert


leading_slice = common.leading_slice


# No fused kernel: the layers' composite `keras.ops` group norm is used.
fused_group_norm = None

# Keras' own convolution (`keras.ops.conv`) is used.
channels_last_conv = None
