"""Parameters and multiply-accumulates of a sliced model at a given rate."""

import math

import keras

from keras_slicing import graph
from keras_slicing import keras_internals
from keras_slicing import widths
from keras_slicing.layers.layer_scale import SlicedLayerScale


def model_cost(model, rate=1.0):
    """Active parameters and MACs per example of `model` at `rate`.

    Counts only the weights a rate actually uses and the multiply-accumulates
    of one example: `Dense` `n_in * n_out`, `Conv2D` `H' * W' * kh * kw *
    c_in * c_out` (`Conv1D` `L' * k * c_in * c_out`), `DepthwiseConv2D`
    `H' * W' * kh * kw * c_out`, `SeparableConv2D` its depthwise and
    pointwise parts (`H' * W' * (kh * kw + c_out) * c_in *
    depth_multiplier`), one MAC per element for a normalization's
    scale-and-shift or a layer scale (ConvNeXt), and none for an `Embedding`
    lookup. Parameters are those a standalone model of that width holds (a
    batch normalization keeps its two moving statistics of the rate).
    Layers without weights cost nothing. A layer
    with a method `active_cost(rate, input_shapes, output_shapes)` returning
    `(params, macs)` counts itself (the sequence layers do, and a custom
    layer can).

    Args:
        model: A functional `keras.Model` whose inputs include the rate.
        rate: The slice rate in (0, 1], or a width configuration (a
            `keras_slicing.WidthConfig` or a dict `{group: rate}`).
            Defaults to `1.0`.

    Returns:
        `{"params": int, "macs": int}`.
    """
    # Costs read no batch-norm statistics: a mixed configuration of a
    # batch-norm model has one too.
    rate = widths.resolve(model, rate, "model_cost", uses_statistics=False)
    params = 0
    macs = 0
    for layer, input_shapes, output_shapes in graph.layer_shapes(model, rate):
        if hasattr(layer, "active_cost"):
            # Sequence layers count their own (several inputs and outputs).
            p, m = layer.active_cost(
                graph.rate_of(rate, layer), input_shapes, output_shapes
            )
        else:
            p, m = _layer_cost(layer, input_shapes[0], output_shapes[0])
        params += p
        macs += m
    return {"params": int(params), "macs": int(macs)}


def _layer_cost(layer, input_shape, output_shape):
    n_in = input_shape[-1]
    n_out = output_shape[-1]
    positions = math.prod(output_shape[1:-1])
    L = keras.layers
    if isinstance(layer, L.Dense):
        bias = n_out if layer.use_bias else 0
        return n_in * n_out + bias, positions * n_in * n_out
    if isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
        window = math.prod(layer.kernel_size)
        mid = n_in * layer.depth_multiplier
        bias = n_out if layer.use_bias else 0
        return (window * mid + mid * n_out + bias,
                positions * (window * mid + mid * n_out))
    if isinstance(layer, L.DepthwiseConv2D):
        window = math.prod(layer.kernel_size)
        bias = n_out if layer.use_bias else 0
        return window * n_out + bias, positions * window * n_out
    if isinstance(layer, (L.Conv1D, L.Conv2D)):
        window = math.prod(layer.kernel_size)
        fan_in = n_in // layer.groups
        bias = n_out if layer.use_bias else 0
        return window * fan_in * n_out + bias, positions * window * fan_in * n_out
    if isinstance(layer, (L.GroupNormalization, L.LayerNormalization)):
        affine = int(bool(layer.scale)) + int(bool(layer.center))
        return affine * n_in, math.prod(input_shape[1:])
    if isinstance(layer, L.BatchNormalization):
        affine = int(bool(layer.scale)) + int(bool(layer.center))
        return (affine + 2) * n_in, math.prod(input_shape[1:])
    if isinstance(layer, L.Embedding):  # kept at full width; a lookup is free
        return layer.input_dim * layer.output_dim, 0
    if isinstance(layer, (keras_internals.LayerScale, SlicedLayerScale)):  # x * gamma
        return n_in, math.prod(input_shape[1:])
    if isinstance(layer, L.Normalization):  # mean, variance and count
        return sum(math.prod(w.shape) for w in layer.weights), math.prod(input_shape[1:])
    if not getattr(layer, "weights", None):  # keras.ops calls hold none
        return 0, 0
    raise ValueError(
        f"model_cost: cannot count the cost of layer '{layer.name}' "
        f"({type(layer).__name__}). Supported layers with weights: Dense, "
        "Conv1D, Conv2D, SeparableConv1D, SeparableConv2D, DepthwiseConv2D, "
        "Embedding, GroupNormalization, ConvNeXt's LayerScale, "
        "BatchNormalization, LayerNormalization, Normalization and the sliced "
        "versions."
    )
