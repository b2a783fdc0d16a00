"""A user's model as one flat list of calls, nested models inlined.

`slice_model` re-creates every layer and replays the graph. Inlining the
calls of nested functional and `Sequential` models into one list lets one
walk see every layer that reads a tensor, whichever model it sits in, and
lets the converted model be a single graph whose layers a narrow width can
reach one by one (Keras checks a nested model's declared input shapes, which
a narrower tensor would not match).
"""

import collections

import keras

Node = collections.namedtuple("Node", ["layer", "name", "args", "kwargs", "outputs"])
Node.__doc__ = """One call of an operation in the flattened graph.

`layer` is the original layer or `keras.ops` operation, `name` the unique
name the converted layer gets, `args`/`kwargs` the call arguments with every
KerasTensor replaced by its canonical tensor (see `Graph`), `outputs` the
flat list of canonical output tensors.
"""


class Graph:
    """The flattened graph of a functional or `Sequential` model.

    Attributes:
        inputs: The model's input KerasTensors.
        outputs: The canonical output tensors, flat.
        nodes: `Node`s in an order where every tensor is computed before
            it is read.
        output_structure: The model's outputs as Keras holds them (a tensor,
            list or dict), for rebuilding the same structure.
    """

    def __init__(self, model):
        functional = as_functional(model)
        self.model = model
        self.inputs = list(functional.inputs)
        self.nodes = []
        self._alias = {}
        self._names = {}
        self._walk(functional, prefix="")
        self.output_structure = functional.output
        self.outputs = [self.canonical(x) for x in keras.tree.flatten(functional.outputs)]

    def canonical(self, tensor):
        while id(tensor) in self._alias:
            tensor = self._alias[id(tensor)]
        return tensor

    def tensors_of(self, node):
        """The KerasTensors a node reads, flat, in argument order."""
        return [
            x for x in keras.tree.flatten((node.args, node.kwargs))
            if isinstance(x, keras.KerasTensor)
        ]

    def _walk(self, functional, prefix):
        for depth in sorted(functional._nodes_by_depth, reverse=True):
            for node in functional._nodes_by_depth[depth]:
                layer = node.operation
                if layer is None or node.is_input:
                    continue
                if isinstance(layer, keras.Model):
                    self._inline(layer, node, prefix)
                    continue
                args, kwargs = node.arguments.convert(self._resolve)
                self.nodes.append(
                    Node(layer, self._unique_name(layer, prefix), args, kwargs,
                         list(node.outputs))
                )

    def _inline(self, model, node, prefix):
        inner = as_functional(model)
        outer_inputs = [self.canonical(x) for x in node.arguments.keras_tensors]
        if len(outer_inputs) != len(inner.inputs):
            raise ValueError(
                f"slice_model: nested model '{model.name}' takes "
                f"{len(inner.inputs)} inputs but is called with "
                f"{len(outer_inputs)} tensors; it cannot be inlined."
            )
        for x, outer in zip(inner.inputs, outer_inputs):
            self._alias[id(x)] = outer
        self._walk(inner, prefix=f"{prefix}{model.name}_")
        inner_outputs = keras.tree.flatten(inner.outputs)
        for outer, x in zip(node.outputs, inner_outputs):
            self._alias[id(outer)] = self.canonical(x)

    def _resolve(self, value):
        if isinstance(value, keras.KerasTensor):
            return self.canonical(value)
        return value

    def _unique_name(self, layer, prefix):
        """The layer's own name, prefixed by its model's only on a clash."""
        if id(layer) in self._names:
            return self._names[id(layer)]  # a shared layer keeps one name
        name = getattr(layer, "name", None) or type(layer).__name__.lower()
        taken = set(self._names.values())
        if name in taken:
            name = f"{prefix}{name}"
            base, count = name, 1
            while name in taken:
                name, count = f"{base}_{count}", count + 1
        self._names[id(layer)] = name
        return name


def as_functional(model):
    """`model` as a functional model over the same layers, or a ValueError."""
    if isinstance(model, keras.Sequential):
        if not model.built or not getattr(model, "inputs", None):
            raise ValueError(
                f"slice_model: Sequential model '{model.name}' has no input "
                "shape yet. Start it with keras.Input(shape) (or build it on "
                "data) so that its layers have a graph to convert."
            )
        return keras.Model(model.inputs, model.outputs, name=model.name)
    if getattr(model, "_nodes_by_depth", None) is not None and hasattr(
        model, "_run_through_graph"
    ):
        return model
    raise ValueError(
        f"slice_model: model '{getattr(model, 'name', '?')}' is a subclassed "
        f"{type(model).__name__}, whose call() is Python code with no graph "
        "of layers to convert. Build it with the functional API or "
        "keras.Sequential (e.g. keras.Model(inputs, outputs)), or slice it "
        "by hand with keras_slicing.layers."
    )
