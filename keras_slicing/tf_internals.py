"""The private TensorFlow API keras-slicing relies on, in one place.

The TensorFlow counterpart of `keras_internals.py`, imported only where
TensorFlow is (the TensorFlow backend, its trainer and the TFLite export).
TensorFlow has no public equivalent of these; each says why it is needed.
Every name is imported or checked when this module is imported, so a
TensorFlow release that moves one fails at import, here, naming the
TensorFlow version. No use has a fallback.
"""

import tensorflow as tf

# A rate tensor gives dynamic shapes, which XLA rejects late and obscurely;
# the layers refuse it early when they are traced inside an XLA function.
from tensorflow.python.ops import control_flow_util

# Which devices a MultiWorkerMirroredStrategy reduces across: one worker's
# strategy behaves like a MirroredStrategy, several need reducible logs.
from tensorflow.python.distribute.collective_all_reduce_strategy import (
    CollectiveAllReduceExtended,
)

# The generated Python of the TFLite flatbuffer schema: the operators a
# converted file holds, and the edit that shares int8 output quantization.
from tensorflow.lite.python import schema_py_generated as tflite_schema  # noqa: F401

for _owner, _name in (
    (control_flow_util, "GraphOrParentsInXlaContext"),
    (CollectiveAllReduceExtended, "_in_multi_worker_mode"),
):
    if not callable(getattr(_owner, _name, None)):
        raise ImportError(
            f"keras_slicing relies on {_owner.__name__}.{_name}, which "
            f"tensorflow {tf.__version__} does not have (it was written "
            "against TensorFlow 2.16 to 2.21). Install a TensorFlow version in "
            "that range, or a keras_slicing release that supports tensorflow "
            f"{tf.__version__}."
        )


def in_xla_context():
    """Whether the function being traced is compiled by XLA."""
    return control_flow_util.GraphOrParentsInXlaContext(
        tf.compat.v1.get_default_graph()
    )


def in_multi_worker_mode(strategy):
    """Whether `strategy` reduces across several worker processes."""
    return isinstance(
        strategy, tf.distribute.MultiWorkerMirroredStrategy
    ) and bool(strategy.extended._in_multi_worker_mode())
