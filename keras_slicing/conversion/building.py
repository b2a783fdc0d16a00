"""Re-creating a model's layers as sliced ones and replaying its graph.

Every layer is re-created from its config (its sliced class with the
slicing arguments the width groups call for, or its own class) under its
own name, called as the original was called (sliced layers with the rate
input), and given the original's weights, permuted where channels were
rewired. The result shares nothing with the original model.
"""

import keras
import numpy as np

from keras_slicing import rates as rates_lib
from keras_slicing.conversion import joins
from keras_slicing.conversion import recipes as recipes_lib
from keras_slicing.layers.concatenate import SlicedConcatenate


class Decision:
    """What one layer becomes.

    Attributes:
        layer: The original layer (or `keras.ops` operation).
        name: The converted layer's name.
        new_class: The class it becomes (its own, or a sliced one).
        slice_input: Whether it reads a sliced tensor.
        slice_output: Whether it writes one.
        reason: Why it stays at full width, when it does.
        slice_heads: Whether it is an attention layer (its heads are sliced
            whatever its input and output widths).
    """

    def __init__(self, layer, name, new_class, slice_input, slice_output, reason,
                 slice_heads=False):
        self.layer = layer
        self.name = name
        self.new_class = new_class
        self.slice_input = slice_input
        self.slice_output = slice_output
        self.reason = reason
        self.slice_heads = slice_heads

    @property
    def status(self):
        if self.slice_input and self.slice_output:
            return "sliced"
        if self.slice_output:
            return "sliced output"
        if self.slice_input:
            return "sliced input"
        if self.slice_heads:  # a full-width residual stream around sliced heads
            return "sliced heads"
        return "full"


def decide(graph, analysis):
    """One `Decision` per layer (per node for `keras.ops` operations)."""
    decisions = {}
    for index, node in enumerate(graph.nodes):
        key = id(node.layer)
        if key in decisions and isinstance(node.layer, keras.layers.Layer):
            continue
        decisions[key] = _decide(index, node, graph, analysis)
    return decisions


def _decide(index, node, graph, analysis):
    layer = node.layer
    inputs = [x for x in graph.tensors_of(node) if id(x) in analysis.channels]
    sliced_in = any(analysis.sliced(x) for x in inputs)
    sliced_out = any(analysis.sliced(y) for y in node.outputs if id(y) in analysis.channels)
    if joins.is_sliced(analysis, index):
        return Decision(layer, node.name, SlicedConcatenate, True, True, None), None
    recipe = analysis.recipes.get(index)
    reason = analysis.refusals.get(index)
    if reason is None and not (sliced_in or sliced_out):
        tensors = list(node.outputs) + inputs  # what it writes explains most
        reason = next((analysis.reason(x) for x in tensors if id(x) in analysis.channels
                       and analysis.reason(x)), None)
    new_class = type(layer)
    if recipe is not None:
        uses = {
            "producer": sliced_in or sliced_out,
            "follower": sliced_in,
            "attention": True,  # the heads are sliced whatever the width
            "flatten": sliced_in and analysis.channels[id(node.outputs[0])].flat is not None,
        }[recipe.role]
        if uses:
            new_class = recipe.sliced_class
            if recipe.role == "attention":
                reason = None
        else:
            recipe = None
    if isinstance(layer, keras.layers.Embedding):
        sliced_in = False
    heads = recipe is not None and recipe.role == "attention"
    return Decision(layer, node.name, new_class, sliced_in, sliced_out, reason,
                    heads), recipe


def build(graph, analysis, decisions, slice_groups, rates, permuter):
    """The converted graph: `(inputs, rate, outputs, pairs)`.

    `pairs` lists `(original layer, new layer)` with weights to copy;
    `permuter` gives each new layer's weights (see `rewiring.Permuter`).
    """
    inputs = [
        keras.Input(batch_shape=x.shape, dtype=x.dtype, name=x.name, sparse=x.sparse)
        for x in graph.inputs
    ]
    taken = {x.name for x in graph.inputs}
    rate_name = "slice_rate"
    while rate_name in taken:
        rate_name = f"_{rate_name}"
    rate = rates_lib.rate_input(rate_name)
    values = {id(x): y for x, y in zip(graph.inputs, inputs)}
    built = {}
    for node in graph.nodes:
        layer = node.layer
        decision, recipe = decisions[id(layer)]
        if decision.new_class is SlicedConcatenate:
            if id(layer) not in built:
                built[id(layer)] = _sliced_join(layer, node.name, slice_groups)
            tensors = [values[id(x)] for x in graph.tensors_of(node)]
            values[id(node.outputs[0])] = built[id(layer)](tensors, rate=rate)
            continue
        if isinstance(layer, keras.layers.Layer):
            if id(layer) not in built:
                built[id(layer)] = _new_layer(node, decision, recipe, analysis, slice_groups, rates)
            new = built[id(layer)]
        else:
            new = layer  # a stateless keras.ops operation
        args, kwargs = keras.tree.map_structure(
            lambda v: values[id(v)] if isinstance(v, keras.KerasTensor) else v,
            (node.args, node.kwargs),
        )
        if recipe is not None and recipe.role != "flatten":
            kwargs = {**kwargs, "rate": rate}
        outputs = new(*args, **kwargs)
        for x, y in zip(node.outputs, keras.tree.flatten(outputs)):
            values[id(x)] = y
        if isinstance(layer, keras.layers.Layer) and layer.weights and not getattr(
            new, "_slicing_weights_set", False
        ):
            new.set_weights(permuter.weights(node, layer, new))
            new._slicing_weights_set = True
    outputs = keras.tree.pack_sequence_as(
        graph.output_structure, [values[id(x)] for x in graph.outputs]
    )
    return inputs, rate, outputs, built


def _sliced_join(layer, name, slice_groups):
    """The `SlicedConcatenate` of a `Concatenate` layer or `keras.ops` call."""
    config = {}
    if isinstance(layer, keras.layers.Layer):
        config = {k: v for k, v in layer.get_config().items()
                  if k in ("dtype", "trainable")}
    return SlicedConcatenate(slice_groups=slice_groups, name=name, **config)


def _new_layer(node, decision, recipe, analysis, slice_groups, rates):
    layer = node.layer
    if recipe is not None:
        config = recipe.sliced_config(
            layer, slice_groups, rates, decision.slice_input, decision.slice_output
        )
        config["name"] = node.name
        return recipe.sliced_class.from_config(config)
    if isinstance(layer, keras.layers.Lambda):
        # A Lambda holds code, not weights; re-creating it from its config
        # would need unsafe deserialization.
        return layer
    config = layer.get_config()
    config["name"] = node.name
    if isinstance(layer, keras.layers.Reshape) and decision.slice_input:
        # The channel count varies with the rate.
        config["target_shape"] = (*node.outputs[0].shape[1:-1], -1)
    try:
        return type(layer).from_config(config)
    except Exception as error:
        raise ValueError(
            f"slice_model: cannot re-create layer '{layer.name}' "
            f"({type(layer).__name__}) from its config: {error}. Give the "
            "class a get_config() that lists its constructor arguments, and "
            "register it with keras.saving.register_keras_serializable()."
        ) from error


def copied_weights(layer, new):
    """The original weights in `new`'s shapes (batch-norm rows tiled)."""
    if isinstance(new, keras.layers.Layer) and type(new) is not type(layer):
        return recipes_lib.carried_weights(layer, new)
    return [np.asarray(w) for w in layer.get_weights()]
