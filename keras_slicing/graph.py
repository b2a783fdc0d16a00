"""Walking a functional model with a rate input at a fixed rate.

Cost counting, sub-model extraction and `SlicingModel.at_rate` replay the
model's graph with the rate input bound to a Python float, so every sliced
layer sees a static width. Keras reads its graphs only through private API,
used here by way of `keras_internals`.
"""

import collections

import keras

from keras_slicing import keras_internals
from keras_slicing.layers.base import SlicedLayerMixin

Call = collections.namedtuple("Call", ["operation", "inputs", "rate", "outputs"])
Call.__doc__ = """One call of an operation in a functional graph.

`inputs` are the KerasTensors it reads (the `rate` argument left out),
`rate` the value of its `rate` argument (None when absent), `outputs` the
KerasTensors it returns.
"""


class LayerRates:
    """The rate of every sliced layer under a width configuration.

    `keras_slicing.widths` resolves a configuration into one; wherever a
    function of this module takes a `rate`, it also takes a `LayerRates`:
    the rate inputs are then bound to `default` and every sliced layer in
    `by_layer` (keyed by `id(layer)`) is called with its own rate.
    """

    def __init__(self, by_layer, default, label):
        self.by_layer = dict(by_layer)
        self.default = float(default)
        self.label = label

    def __repr__(self):
        return f"LayerRates({self.label})"


def rate_of(rate, layer):
    """The Python rate `layer` runs at under `rate` (a float or `LayerRates`)."""
    if isinstance(rate, LayerRates):
        return rate.by_layer.get(id(layer), rate.default)
    return rate


def describe_rate(rate):
    """A rate or `LayerRates` as text for names and messages."""
    if isinstance(rate, LayerRates):
        return rate.label
    return format(float(rate), "g")


def rate_inputs(model):
    """The model inputs that feed the `rate` of a sliced layer.

    An input that reaches a nested functional model's rate input counts too.
    """
    _check_functional(model)
    used = set()
    for layer in model.layers:
        for node in keras_internals.inbound_nodes(layer):
            rate = node.arguments.kwargs.get("rate")
            if isinstance(rate, keras.KerasTensor):
                used.add(id(rate))
            if is_functional(layer) and layer is not model:
                inner = {id(x) for x in rate_inputs(layer)}
                for outer, x in zip(node.input_tensors, layer.inputs):
                    if id(x) in inner:
                        used.add(id(outer))
    return [x for x in model.inputs if id(x) in used]


def calls(model):
    """The `Call`s of `model`'s graph in execution order, inputs left out."""
    _check_functional(model)
    nodes_by_depth = keras_internals.nodes_by_depth(model)
    for depth in sorted(nodes_by_depth, reverse=True):
        for node in nodes_by_depth[depth]:
            if not node.operation or node.is_input:
                continue
            rate = node.arguments.kwargs.get("rate")
            inputs = [x for x in node.input_tensors if x is not rate]
            yield Call(node.operation, inputs, rate, list(node.outputs))


def data_inputs(model):
    """The model inputs that are not slice rates."""
    rate_ids = {id(x) for x in rate_inputs(model)}
    return [x for x in model.inputs if id(x) not in rate_ids]


def replay(model, rate, call_fn, inputs=None):
    """Runs `model`'s graph with every rate input replaced by `rate`.

    `call_fn(layer, *args, **kwargs)` computes each node's outputs; `inputs`
    maps to the data inputs (defaults to the model's own symbolic inputs).
    Returns the model outputs in `model.outputs` order.
    """
    rate_ids = {id(x) for x in rate_inputs(model)}
    data = list(inputs) if inputs is not None else data_inputs(model)
    if isinstance(rate, LayerRates):
        call_fn = _per_layer(rate, call_fn)
        rate = rate.default
    feed = []
    data_iter = iter(data)
    for x in model.inputs:
        feed.append(rate if id(x) in rate_ids else next(data_iter))
    return keras_internals.run_through_graph(model, feed, call_fn)


def _per_layer(layer_rates, call_fn):
    def call(layer, *args, **kwargs):
        if kwargs.get("rate") is not None and is_sliced(layer):
            kwargs["rate"] = rate_of(layer_rates, layer)
        return call_fn(layer, *args, **kwargs)

    return call


def layer_shapes(model, rate):
    """`[(layer, input_shapes, output_shapes)]` of every node at `rate`."""
    records = []

    def record(layer, *args, **kwargs):
        tensors = [
            a for a in keras.tree.flatten((args, kwargs))
            if isinstance(a, keras.KerasTensor)
        ]
        if is_functional(layer):
            # A nested model is walked layer by layer: its own input specs
            # hold full widths, which a sliced tensor would not match.
            return replay(layer, rate, record, inputs=tensors)
        outputs = layer.compute_output_spec(*args, **kwargs)
        records.append(
            (
                layer,
                [tuple(t.shape) for t in tensors],
                [tuple(t.shape) for t in keras.tree.flatten(outputs)],
            )
        )
        return outputs

    replay(model, rate, record)
    return records


def is_functional(layer):
    """Whether `layer` is a functional model whose graph can be replayed."""
    return keras_internals.is_functional(layer)


def is_sliced(layer):
    return isinstance(layer, SlicedLayerMixin)


def _check_functional(model):
    if not is_functional(model):
        raise ValueError(
            "Expected a functional keras.Model built from keras.Input "
            f"tensors. Received: {type(model).__name__}"
        )
