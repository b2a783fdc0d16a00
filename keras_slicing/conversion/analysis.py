"""Which channels of a model can be sliced: width groups.

The channels on the last axis of a tensor belong to a width group. A layer
that chooses its output width (Dense, convolutions, Embedding, LSTM, GRU)
starts a group; a per-channel layer (normalizations, depthwise convolution,
activations, dropout, pooling, padding, ...) passes its input's group on; a
merge (`Add`, `Multiply`, ... as layers or as `keras.ops` calls such as
`x + y`) unites its inputs' groups, since their widths must agree at every
rate. A `Concatenate` on the channel axis (a *join*) starts a group of its
own, whose channels are its inputs' interleaved slice group by slice group
(`SlicedConcatenate`): it is sliced only together with all its inputs. A
group is sliced only if its width divides into `slice_groups`, every layer
that writes it can narrow its output, every layer that reads it can read a
narrower tensor, and it is no model input or output; otherwise it stays at
full width, for the reason recorded. Every decision marks a whole group, so
one pass over the graph and one over the joins reach the fixed point.
"""

import collections
import math

import keras
import numpy as np

from keras_slicing import checks
from keras_slicing import keras_internals
from keras_slicing.conversion import joins as joins_lib
from keras_slicing.conversion import recipes as recipes_lib

# How a tensor's last axis relates to its width group: feature `f` belongs
# to channel `f // factor` (a depthwise multiplier or a flatten repeats each
# channel); `flat` is `(positions, features)` when a flatten of a
# channels-last map made the features position-major (`p * features + f`),
# which a sliced model replaces by channel-major order (`SlicedFlatten`).
Channels = collections.namedtuple("Channels", ["group", "factor", "flat"])

_REORDERING = (keras.layers.Reshape, keras.layers.Permute)


class WidthGroups:
    """Union-find over width groups, each with its width and full-width reasons."""

    def __init__(self):
        self._parent = []
        self.width = []
        self.reasons = []

    def new(self, width, reason=None):
        group = len(self._parent)
        self._parent.append(group)
        self.width.append(width)
        self.reasons.append([reason] if reason else [])
        return group

    def find(self, group):
        while self._parent[group] != group:
            self._parent[group] = self._parent[self._parent[group]]
            group = self._parent[group]
        return group

    def union(self, a, b):
        a, b = self.find(a), self.find(b)
        if a != b:
            self._parent[b] = a
            self.reasons[a].extend(self.reasons[b])
        return a

    def keep_full(self, group, reason):
        self.reasons[self.find(group)].append(reason)

    def sliced(self, group):
        return not self.reasons[self.find(group)]

    def reason(self, group):
        reasons = self.reasons[self.find(group)]
        return reasons[0] if reasons else None


class Analysis:
    """The width groups of a flattened graph (`nodes.Graph`).

    Attributes:
        groups: The `WidthGroups`.
        channels: `{id(tensor): Channels}` for every tensor of the graph.
        recipes: `{node index: Recipe}` of the layers with a sliced version
            whose role was kept (a layer that cannot be sliced has none).
        refusals: `{node index: reason}` for layers kept plain.
        gn_blocks: `{group: [channels per normalization group]}`, the blocks
            a channel permutation must keep together.
        joins: `{node index: joins.Join}` of the channel-axis
            concatenations.
        group_norms: `(tensor, node)` of every `GroupNormalization` call.
    """

    def __init__(self, graph, slice_groups, rates, keep_full):
        self.graph = graph
        self.slice_groups = slice_groups
        self.rates = rates
        self.keep_full = set(keep_full)
        self.groups = WidthGroups()
        self.channels = {}
        self.recipes = {}
        self.refusals = {}
        self.gn_blocks = collections.defaultdict(list)
        self.joins = {}
        self.group_norms = []
        for x in graph.inputs:
            self._source(x, f"model input '{x.name}'")
        first_calls = {}
        for index, node in enumerate(graph.nodes):
            self._visit(index, node)
            if isinstance(node.layer, keras.layers.Layer):
                first = first_calls.setdefault(id(node.layer), node)
                if first is not node:
                    self._share(first, node)
        for x in graph.outputs:
            self._full(x, "model output")
        self._check_widths()
        joins_lib.link(self)

    # ------------------------------------------------------------ queries

    def sliced(self, tensor):
        return self.groups.sliced(self.channels[id(tensor)].group)

    def group_of(self, tensor):
        return self.groups.find(self.channels[id(tensor)].group)

    def reason(self, tensor):
        return self.groups.reason(self.channels[id(tensor)].group)

    # --------------------------------------------------------------- walk

    def _source(self, tensor, reason):
        width = tensor.shape[-1] if tensor.shape else None
        self.channels[id(tensor)] = Channels(self.groups.new(width, reason), 1, None)

    def _full(self, tensor, reason):
        self.groups.keep_full(self.channels[id(tensor)].group, reason)

    def _visit(self, index, node):
        layer, inputs = node.layer, self.graph.tensors_of(node)
        label = f"'{node.name}' ({type(layer).__name__})"
        if node.name in self.keep_full:
            return self._opaque(node, inputs, f"{label}, named in keep_full")
        recipe = recipes_lib.recipe_for(layer)
        if recipe is not None:
            problem = self._recipe_problem(recipe, layer, node, inputs)
            if problem is None:
                self.recipes[index] = recipe
                return getattr(self, f"_{recipe.role}")(index, node, inputs)
            self.refusals[index] = problem
            return self._opaque(node, inputs, f"{label} {problem}")
        kind = _plain_kind(layer)
        if kind == "following":
            problem = _following_problem(layer, inputs)
            if problem:
                for x in inputs:
                    self._full(x, f"{label} {problem}")
            return self._pass(node, inputs[0] if inputs else None)
        if kind == "merging":
            return self._merge(node, inputs, label)
        if kind == "concatenating":
            return self._concatenate(index, node, inputs, label)
        if isinstance(layer, _REORDERING):
            return self._reorder(node, inputs[0], label)
        what = "holds weights and has no sliced version" if (
            isinstance(layer, keras.layers.Layer) and layer.weights
        ) else "is not known to treat each channel on its own"
        self.refusals[index] = what
        return self._opaque(node, inputs, f"{label} {what}")

    def _share(self, first, node):
        """A layer called again: one set of weights, so one slicing."""
        pairs = list(zip(self.graph.tensors_of(first), self.graph.tensors_of(node)))
        pairs += list(zip(first.outputs, node.outputs))
        for a, b in pairs:
            channels_a, channels_b = self.channels[id(a)], self.channels[id(b)]
            self.groups.union(channels_a.group, channels_b.group)
            if channels_a[1:] != channels_b[1:]:
                self._full(a, f"shared layer '{node.name}' reads tensors laid out "
                              "differently")

    def _opaque(self, node, inputs, reason):
        """A layer that reads and writes full-width tensors only."""
        for x in inputs:
            self._full(x, f"read by {reason}")
        for x in node.outputs:
            self._source(x, f"written by {reason}")

    def _recipe_problem(self, recipe, layer, node, inputs):
        """Why `layer` cannot become its sliced version, or None."""
        if isinstance(layer, (keras.layers.RNN, keras.layers.MultiHeadAttention)) and any(
            keras_internals.keras_mask(x) is not None for x in inputs
        ):
            return ("reads a masked sequence (e.g. from an Embedding with "
                    "mask_zero=True), which its sliced version does not take")
        if recipe.role == "attention":
            query = node.args[0] if node.args else node.kwargs.get("query")
            value = node.args[1] if len(node.args) > 1 else node.kwargs.get("value")
            key = node.args[2] if len(node.args) > 2 else node.kwargs.get("key")
            if key is not None and key is not value:
                return "has a key tensor apart from the value"
            if query is None or value is None:
                return "is called without query and value"
        if isinstance(layer, keras.layers.GroupNormalization) and (
            layer.groups % self.slice_groups
        ):
            return (f"has groups={layer.groups}, not a multiple of "
                    f"slice_groups={self.slice_groups}")
        try:
            # Whether it can read a sliced tensor; the widths are checked
            # per group.
            recipe.make(layer, self.slice_groups, self.rates, slice_output=False)
        except ValueError as error:
            return f"cannot be sliced: {error}"
        return None

    def _producer(self, index, node, inputs):
        layer = node.layer
        width = node.outputs[0].shape[-1]
        group = self.groups.new(width)
        for x in node.outputs:
            self.channels[id(x)] = Channels(group, 1, None)
        if isinstance(layer, keras.layers.Embedding):
            for x in inputs:
                self._full(x, f"read as ids by '{node.name}'")
            return
        for x in inputs:
            self._read_projection(x, node)

    def _read_projection(self, x, node):
        """A projection reads `x`: it can read a sliced one unless reordered."""
        channels = self.channels[id(x)]
        if channels.flat is not None and not isinstance(node.layer, keras.layers.Dense):
            self._full(x, f"read by '{node.name}' after a flatten, which only a "
                          "Dense layer reads channel by channel")

    def _follower(self, index, node, inputs):
        layer = node.layer
        x = inputs[0]
        channels = self.channels[id(x)]
        # A Conv2D follows its input only as a depthwise one (one channel
        # per group).
        if isinstance(layer, (keras.layers.DepthwiseConv2D, keras.layers.Conv2D)):
            multiplier = recipes_lib.depth_multiplier(layer)
            channels = channels._replace(factor=channels.factor * multiplier)
        if isinstance(layer, keras.layers.GroupNormalization):
            per_group = x.shape[-1] // layer.groups
            if channels.factor != 1 or channels.flat is not None:
                self._full(x, f"'{node.name}' normalizes groups of a flattened tensor")
            self.gn_blocks[channels.group].append(per_group)
            self.group_norms.append((x, node))
        for y in node.outputs:
            self.channels[id(y)] = channels

    def _attention(self, index, node, inputs):
        layer = node.layer
        query = node.args[0] if node.args else node.kwargs["query"]
        value = node.args[1] if len(node.args) > 1 else node.kwargs["value"]
        for x in inputs:
            if x is query or x is value:
                self._read_projection(x, node)
            else:
                self._full(x, f"an attention mask of '{node.name}'")
        output = node.outputs[0]
        if layer.get_config().get("output_shape") is None:
            self.channels[id(output)] = self.channels[id(query)]
        else:
            self._source(output, f"'{node.name}' has a fixed output_shape")
        for scores in node.outputs[1:]:
            self._source(scores, f"attention scores of '{node.name}'")

    def _flatten(self, index, node, inputs):
        x = inputs[0]
        channels = self.channels[id(x)]
        positions = _positions(x)
        if len(x.shape) <= 2 or positions == 1:
            return self._pass(node, x)
        if getattr(node.layer, "data_format", None) == "channels_first":
            self._full(x, f"'{node.name}' flattens channels first")
            return self._source(node.outputs[0], f"written by '{node.name}'")
        if positions is None or channels.flat is not None:
            self._full(x, f"'{node.name}' flattens a map of unknown size")
            return self._source(node.outputs[0], f"written by '{node.name}'")
        flat = (positions, x.shape[-1])
        self.channels[id(node.outputs[0])] = Channels(
            channels.group, channels.factor * positions, flat
        )

    def _pass(self, node, x):
        if x is None:
            for y in node.outputs:
                self._source(y, f"written by '{node.name}'")
            return
        for y in node.outputs:
            if y.shape and y.shape[-1] == x.shape[-1]:
                self.channels[id(y)] = self.channels[id(x)]
            else:
                self._full(x, f"'{node.name}' changes the channel count")
                self._source(y, f"written by '{node.name}'")

    def _merge(self, node, inputs, label):
        width = node.outputs[0].shape[-1]
        joined = [x for x in inputs if x.shape and x.shape[-1] == width and width != 1]
        for x in inputs:
            if x.shape and x.shape[-1] not in (width, 1):
                self._full(x, f"{label} broadcasts it")
        for value in keras.tree.flatten((node.args, node.kwargs)):
            if not isinstance(value, keras.KerasTensor) and np.ndim(value) and np.shape(value)[-1] != 1:
                for x in joined:
                    self._full(x, f"{label} merges it with a constant of {np.shape(value)[-1]} channels")
        if not joined:
            return self._pass(node, None)
        first = self.channels[id(joined[0])]
        for x in joined[1:]:
            other = self.channels[id(x)]
            self.groups.union(first.group, other.group)
            if other[1:] != first[1:]:
                self._full(x, f"{label} merges tensors laid out differently")
        self.channels[id(node.outputs[0])] = first

    def _concatenate(self, index, node, inputs, label):
        axis = getattr(node.layer, "axis", node.kwargs.get("axis", -1))
        rank = len(node.outputs[0].shape)
        if axis % rank != rank - 1:
            return self._merge(node, inputs, label)
        output = node.outputs[0]
        group = self.groups.new(output.shape[-1])
        self.channels[id(output)] = Channels(group, 1, None)
        self.joins[index] = joins_lib.Join(index, group, inputs, label)
        for x in inputs:
            if self.channels[id(x)].flat is not None:
                self._full(x, f"joined on the channel axis by {label} after a flatten")

    def _reorder(self, node, x, label):
        y = node.outputs[0]
        channels = self.channels[id(x)]
        keeps = (
            channels.flat is None
            and y.shape[-1] == x.shape[-1]
            and _positions(x) is not None
            and _positions(x) == _positions(y)
        )
        if isinstance(node.layer, keras.layers.Permute):
            keeps = keeps and tuple(node.layer.dims)[-1] == len(node.layer.dims)
        if keeps:
            self.channels[id(y)] = channels
        else:
            self._full(x, f"{label} moves its channels")
            self._source(y, f"written by {label}")

    def _check_widths(self):
        for channels in self.channels.values():
            group = self.groups.find(channels.group)
            width = self.groups.width[group]
            if width is None:
                self.groups.keep_full(group, "width unknown")
            elif width % self.slice_groups:
                self.groups.keep_full(
                    group, f"width {width} is not divisible by "
                           f"slice_groups={self.slice_groups}")


def _plain_kind(layer):
    if getattr(layer, "follows_input_width", False) is True:
        return "following"
    if isinstance(layer, keras.layers.Layer):
        if isinstance(layer, checks._FOLLOWING) and not layer.weights:
            return "following"
        if isinstance(layer, checks._MERGING):
            return "merging"
        if isinstance(layer, checks._CONCATENATING):
            return "concatenating"
        return "other"
    name = type(layer).__name__
    if name in checks._OP_FOLLOWING:
        return "following"
    if name in checks._OP_MERGING:
        return "merging"
    if name in checks._OP_CONCATENATING:
        return "concatenating"
    return "other"


def _following_problem(layer, inputs):
    """Why a per-channel layer cannot read a sliced tensor, or None."""
    if getattr(layer, "data_format", None) == "channels_first" and inputs and len(
        inputs[0].shape
    ) > 2:
        return "has data_format='channels_first'"
    noise = getattr(layer, "noise_shape", None)
    if noise is not None and noise[-1] not in (None, 1):
        return f"has a fixed noise_shape={tuple(noise)}"
    for arg in ("scale", "offset"):
        value = getattr(layer, arg, None) if isinstance(layer, keras.layers.Rescaling) else None
        if value is not None and np.ndim(value) and np.shape(value)[-1] != 1:
            return f"has a {arg} per channel"
    return None


def _positions(tensor):
    dims = tensor.shape[1:-1]
    if any(d is None for d in dims):
        return None
    return math.prod(dims)
