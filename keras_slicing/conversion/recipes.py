"""How each Keras layer that has a sliced version becomes it.

A recipe names the sliced class, the role the layer plays for the width
groups (see `analysis.py`), the config changes, and how its weights are
carried over and permuted (channel rewiring). The plain layer's own weights
come in `layer.get_weights()` order, which the sliced layers keep (they
subclass the plain ones); only batch normalization stores its moving
statistics once per rate.
"""

import keras
import numpy as np

from keras_slicing import keras_internals
from keras_slicing import layers as sliced


class Recipe:
    """What `slice_model` does with one layer class.

    Attributes:
        role: `"producer"` (chooses its output width: Dense, convolutions
            including separable ones, Embedding, LSTM, GRU), `"follower"` (per channel: its output
            channels are its input's: normalizations, depthwise),
            `"attention"` (MultiHeadAttention: heads sliced, output width
            follows the query) or `"flatten"`.
        sliced_class: The class from `keras_slicing.layers`.
    """

    def __init__(self, role, sliced_class, slicing_args):
        self.role = role
        self.sliced_class = sliced_class
        self._slicing_args = slicing_args

    def sliced_config(self, layer, slice_groups, rates, slice_input, slice_output):
        config = dict(layer.get_config())
        for key in ("lora_rank", "lora_alpha", "quantization_config"):
            if config.get(key) is None:
                config.pop(key, None)
        config.update(_last_axis(layer, config))
        args = {
            "slice_groups": slice_groups,
            "slice_input": slice_input,
            "slice_output": slice_output,
            "rates": list(rates),
        }
        config.update({k: args[k] for k in self._slicing_args})
        return config

    def make(self, layer, slice_groups, rates, slice_input=True, slice_output=True):
        """The sliced layer (not built), or a ValueError saying why not."""
        config = self.sliced_config(layer, slice_groups, rates, slice_input,
                                    slice_output)
        try:
            return self.sliced_class.from_config(config)
        except (TypeError, ValueError) as error:
            # Keras wraps the constructor's ValueError in a TypeError.
            cause = error.__cause__ or error.__context__ or error
            raise ValueError(str(cause)) from error


class _DepthwiseFromGrouped(Recipe):
    """A `Conv2D` with one input channel per group (`groups` equal to its
    input channels, as ConvNeXt writes its depthwise convolutions) is a
    depthwise convolution, and becomes a `SlicedDepthwiseConv2D`."""

    def __init__(self):
        super().__init__("follower", sliced.SlicedDepthwiseConv2D, ("slice_groups",))

    def sliced_config(self, layer, slice_groups, rates, slice_input, slice_output):
        config = layer.get_config()
        renamed = {"kernel_initializer": "depthwise_initializer",
                   "kernel_regularizer": "depthwise_regularizer",
                   "kernel_constraint": "depthwise_constraint"}
        dropped = ("filters", "groups", "lora_rank", "lora_alpha", "quantization_config")
        result = {renamed.get(k, k): v for k, v in config.items() if k not in dropped}
        result["depth_multiplier"] = layer.filters // layer.groups
        result["slice_groups"] = slice_groups
        return result


def depth_multiplier(layer):
    """Outputs per input channel of a depthwise convolution, plain or grouped."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return layer.depth_multiplier
    return layer.filters // layer.groups


def _is_grouped_depthwise(layer):
    return (
        type(layer) is keras.layers.Conv2D
        and layer.groups > 1
        and layer.built
        and layer.kernel.shape[-2] == 1
    )


def _last_axis(layer, config):
    """Normalization axes written as -1 when they are the last axis."""
    if "axis" not in config or not hasattr(layer, "input"):
        return {}
    try:
        rank = len(layer.input.shape)
    except (AttributeError, ValueError):
        return {}
    axis = config["axis"]
    axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    if len(axes) == 1 and axes[0] % rank == rank - 1:
        return {"axis": -1}
    return {}


def recipe_for(layer):
    """The `Recipe` of `layer`'s exact class, or None.

    Exact classes only: a subclass may compute something else in `call`.
    """
    K = keras.layers
    table = {
        K.Dense: Recipe("producer", sliced.SlicedDense,
                        ("slice_groups", "slice_input", "slice_output")),
        K.Conv1D: Recipe("producer", sliced.SlicedConv1D,
                         ("slice_groups", "slice_input", "slice_output")),
        K.Conv2D: Recipe("producer", sliced.SlicedConv2D,
                         ("slice_groups", "slice_input", "slice_output")),
        K.SeparableConv1D: Recipe("producer", sliced.SlicedSeparableConv1D,
                                  ("slice_groups", "slice_input", "slice_output")),
        K.SeparableConv2D: Recipe("producer", sliced.SlicedSeparableConv2D,
                                  ("slice_groups", "slice_input", "slice_output")),
        K.Embedding: Recipe("producer", sliced.SlicedEmbedding,
                            ("slice_groups", "slice_output")),
        K.LSTM: Recipe("producer", sliced.SlicedLSTM,
                       ("slice_groups", "slice_input", "slice_output")),
        K.GRU: Recipe("producer", sliced.SlicedGRU,
                      ("slice_groups", "slice_input", "slice_output")),
        K.DepthwiseConv2D: Recipe("follower", sliced.SlicedDepthwiseConv2D,
                                  ("slice_groups",)),
        K.BatchNormalization: Recipe("follower", sliced.SlicedBatchNormalization,
                                     ("slice_groups", "rates")),
        K.GroupNormalization: Recipe("follower", sliced.SlicedGroupNormalization,
                                     ("slice_groups",)),
        K.LayerNormalization: Recipe("follower", sliced.SlicedLayerNormalization,
                                     ("slice_groups",)),
        K.MultiHeadAttention: Recipe("attention", sliced.SlicedMultiHeadAttention,
                                     ("slice_input",)),
        K.Flatten: Recipe("flatten", sliced.SlicedFlatten, ()),
        keras_internals.LayerScale: Recipe("follower", sliced.SlicedLayerScale,
                                           ("slice_groups",)),
    }
    if _is_grouped_depthwise(layer):
        return _DepthwiseFromGrouped()
    recipe = table.get(type(layer))
    if recipe is None:
        return None
    if type(layer) is K.LayerNormalization and not layer.weights:
        return None  # no weights: a plain per-channel layer (see checks.py)
    return recipe


def carried_weights(layer, new_layer):
    """`layer`'s weights in the order and shapes `new_layer` holds them."""
    weights = [np.asarray(w) for w in layer.get_weights()]
    if _is_grouped_depthwise(layer):
        # Output g * m + j of group g reads input channel g, as depthwise
        # output c * m + j reads channel c: (kh, kw, 1, C * m) -> (kh, kw, C, m).
        kernel = weights[0]
        m = depth_multiplier(layer)
        weights[0] = kernel.reshape(*kernel.shape[:2], kernel.shape[-1] // m, m)
    if isinstance(new_layer, sliced.SlicedBatchNormalization):
        rows = len(new_layer.declared_rates)
        # Every width starts from the full network's statistics; a
        # calibration (keras_slicing.calibrate_batchnorm) or training makes
        # them each width's own.
        weights = [
            np.tile(w[None], (rows, 1)) if v.path.endswith(("moving_mean", "moving_variance"))
            else w
            for w, v in zip(weights, layer.weights)
        ]
    return weights
