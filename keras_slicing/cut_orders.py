"""Joins of a cut width in native order, their channel order carried on.

`SlicedConcatenate` interleaves its inputs slice group by slice group, so
that its active channels are a prefix at every rate. A width cut out by
`extract_submodel` has one rate and needs no prefix: it concatenates its
inputs as `keras.layers.Concatenate` does and records, per tensor, where
each channel of the sliced model's tensor went (`order[p]`: the cut
tensor's channel holding the sliced tensor's channel `p`). Layers that treat
channels alike carry the order on (elementwise, pooling, padding), layers
with per-channel input weights take it into their weights (the input rows
of a dense or convolution kernel, a batch or layer normalization's vectors,
a depthwise kernel), and any other reader, or a model output, gets the
sliced order back through one gather. A cut DenseNet then holds the
operators of a natively narrow one.
"""

import keras
import numpy as np

from keras_slicing import checks
from keras_slicing.layers.base import SlicedProjectionMixin
from keras_slicing.layers.base import SlicedSeparableConvolutionMixin
from keras_slicing.layers.base import multiplied_order
from keras_slicing.layers.batch_normalization import SlicedBatchNormalization
from keras_slicing.layers.concatenate import interleaved_order
from keras_slicing.layers.depthwise_conv2d import SlicedDepthwiseConv2D
from keras_slicing.layers.layer_normalization import SlicedLayerNormalization
from keras_slicing.layers.layer_scale import SlicedLayerScale

# Per-channel layers without weights whose output channel `c` is computed
# from input channel `c` alone, or symmetrically from all (softmax).
_CARRYING = tuple(c for c in checks._FOLLOWING if c is not keras.layers.Rescaling)
_ABSORBING = (SlicedProjectionMixin, SlicedBatchNormalization,
              SlicedLayerNormalization, SlicedDepthwiseConv2D, SlicedLayerScale)


def join_order(widths, orders, groups):
    """The order of a native concatenation of tensors of `widths`.

    `orders` are the inputs' own (None: the sliced order); the sliced model
    lays the inputs out `groups` slice groups at a time.
    """
    return interleaved_order(
        [np.arange(w) if o is None else o for w, o in zip(widths, orders)], groups
    )


class Orders:
    """The channel order of each tensor of a cut model (by id), if not sliced."""

    def __init__(self):
        self._orders = {}
        self._restored = {}

    def of(self, tensor):
        return self._orders.get(id(tensor))

    def set(self, tensors, order):
        for tensor in keras.tree.flatten(tensors):
            self._orders[id(tensor)] = order
        return tensors

    def restored(self, structure):
        """`structure` with every tensor of an order gathered back into the
        sliced order (one gather per tensor, shared by its readers)."""

        def restore(value):
            order = self._orders.get(id(value)) if isinstance(value, keras.KerasTensor) else None
            if order is None:
                return value
            if id(value) not in self._restored:
                self._restored[id(value)] = keras.ops.take(value, order, axis=-1)
            return self._restored[id(value)]

        return keras.tree.map_structure(restore, structure)


def carries(layer, tensors):
    """Whether `layer` called on `tensors` passes a channel order on."""
    if len(tensors) != 1:
        return False
    if isinstance(layer, keras.layers.Layer):
        return isinstance(layer, _CARRYING) and not layer.weights
    return type(layer).__name__ in checks._OP_FOLLOWING


def absorbs(layer, tensors):
    """Whether sliced `layer` can take a channel order into its weights."""
    return len(tensors) == 1 and isinstance(layer, _ABSORBING)


def absorbed(layer, weights, order):
    """`weights` of `layer`'s plain width reading its channels in `order`."""
    inverse = np.argsort(order)
    if isinstance(layer, SlicedSeparableConvolutionMixin):
        rows = multiplied_order(inverse, layer.depth_multiplier)
        return [np.take(weights[0], inverse, axis=-2),
                np.take(weights[1], rows, axis=-2), *weights[2:]]
    if isinstance(layer, SlicedProjectionMixin):
        return [np.take(weights[0], inverse, axis=-2), *weights[1:]]
    if isinstance(layer, SlicedDepthwiseConv2D):
        result = [np.take(weights[0], inverse, axis=2)]
        if len(weights) > 1:
            result.append(weights[1][multiplied_order(inverse, layer.depth_multiplier)])
        return result
    return [np.take(w, inverse, axis=-1) for w in weights]


def followed(layer, order):
    """The order of `layer`'s output when it reads a tensor in `order`."""
    if isinstance(layer, SlicedDepthwiseConv2D):
        return multiplied_order(order, layer.depth_multiplier)
    if getattr(layer, "follows_input_width", False):
        return order
    return None
