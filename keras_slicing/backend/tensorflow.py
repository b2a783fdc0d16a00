"""Slicing on the TensorFlow backend.

A rate tensor stays symbolic in a traced function: one graph serves every
rate, with the width computed and checked in the graph.
"""

import weakref

import numpy as np
import tensorflow as tf

from keras_slicing import tf_internals
from keras_slicing.backend import common


def concrete_rate(rate, owner):
    """The rate as a Python float when it is known now, else None.

    Python numbers, numpy values and eager tensors are concrete; a rate vector
    must hold one repeated value.
    """
    value = common.host_rate(rate, owner)
    if value is not None:
        return value
    if tf.is_tensor(rate) and hasattr(rate, "numpy") and tf.executing_eagerly():
        return common.rate_of_values(rate, owner)
    return None


def concrete_value(value):
    """A number, numpy value or eager tensor as a numpy array, else None."""
    array = common.host_array(value)
    if array is not None or isinstance(value, (bool, np.bool_)):
        return array
    if tf.is_tensor(value) and hasattr(value, "numpy") and tf.executing_eagerly():
        return np.asarray(value)
    return None


def tensor_rate_groups(rate, slice_groups, owner):
    """Active groups of a symbolic rate: an int32 scalar checked in the graph.

    Built once per rate tensor and group count in a graph: every sliced
    layer of a model receives the same rate tensor, and one check and one
    width computation serve them all.
    """
    ensure_dynamic_shapes_allowed(owner)
    return per_rate_tensor(
        rate,
        ("groups", slice_groups),
        lambda: groups_from_rate_scalar(
            per_rate_tensor(
                rate, "checked", lambda: checked_rate_scalar(rate, owner)
            ),
            slice_groups,
        ),
    )


# Graph -> {(id(rate), key): (rate, value)}; the rate is kept so that its id
# is not reused while the graph lives.
_PER_RATE_TENSOR = weakref.WeakKeyDictionary()


def per_rate_tensor(rate, key, build):
    """`build()`, built once per symbolic `rate` tensor and `key` in a graph.

    A traced training step feeds one rate tensor to every sliced layer;
    checking it and deriving widths from it once per layer (assertions are
    conditionals in the graph) multiplied the tracing time and the graph
    that TensorFlow optimizes before the first step runs.
    """
    graph = tf.compat.v1.get_default_graph()
    memo = _PER_RATE_TENSOR.setdefault(graph, {})
    entry = memo.get((id(rate), key))
    if entry is None or entry[0] is not rate:
        entry = memo[(id(rate), key)] = (rate, build())
    return entry[1]


def checked_rate_scalar(rate, owner):
    """Reduces a symbolic rate tensor to a scalar and checks it in the graph.

    An empty batch (a replica's share of a short last batch) has no rate:
    it runs at full width, which computes nothing for zero examples.
    """
    values = tf.reshape(tf.cast(rate, tf.float32), [-1])
    empty = tf.equal(tf.size(values), 0)
    high = tf.where(empty, 1.0, tf.reduce_max(values))
    low = tf.where(empty, 1.0, tf.reduce_min(values))
    # The range first: NaN compares false, and would otherwise be reported
    # as unequal entries.
    in_range = tf.debugging.Assert(
        tf.reduce_all(tf.logical_and(values > 0.0, values <= 1.0)),
        [
            f"{owner}: the slice rate must be in (0, 1]. Received rates "
            "(first entries):",
            values,
        ],
        summarize=4,
    )
    with tf.control_dependencies([in_range]):
        equal = tf.debugging.Assert(
            tf.equal(low, high),
            [
                f"{owner}: all entries of a slice-rate tensor must be equal "
                "(one width per batch). Received min/max:",
                low,
                high,
            ],
        )
    checks = [in_range, equal]
    with tf.control_dependencies(checks):
        return tf.identity(high)


def groups_from_rate_scalar(rate, slice_groups):
    """`ceil(round(rate * G, 6))` in float64 so that k/G gives exactly k."""
    scaled = tf.cast(rate, tf.float64) * float(slice_groups)
    rounded = tf.round(scaled * 1e6) / 1e6
    return tf.maximum(tf.cast(tf.math.ceil(rounded), tf.int32), 1)


def ensure_dynamic_shapes_allowed(owner):
    """Refuses a tensor rate inside an XLA-compiled function.

    XLA drops the rate checks (assertions) and, on GPUs, rejects convolutions
    with a dynamic feature dimension; a static rate compiles everywhere.
    """
    if not tf.executing_eagerly() and tf_internals.in_xla_context():
        raise ValueError(
            f"{owner}: a slice rate given as a tensor makes kernel shapes "
            "dynamic, which XLA (jit_compile=True) does not support. Call "
            "the layer with a Python float rate (one compiled function per "
            "width), or compile with jit_compile=False."
        )


def is_tracing(tensor):
    """Whether a traced function is being built (`tf.function`)."""
    del tensor
    return not tf.executing_eagerly()


def dim(x, axis):
    """Size of `x` along `axis`: a Python int when static, else a tensor."""
    static = x.shape[axis]
    return static if static is not None else tf.shape(x)[axis]


def assert_true(condition, message):
    """A graph-mode check whose failure carries `message`."""
    return tf.debugging.Assert(condition, [message])


leading_slice = common.leading_slice


# No fused kernel: the layers' composite `keras.ops` group norm is used.
fused_group_norm = None

# Keras' own convolution (`keras.ops.conv`) is used.
channels_last_conv = None
