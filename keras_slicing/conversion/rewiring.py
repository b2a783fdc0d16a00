"""Channel rewiring: the most important channels first.

A sliced layer at rate `r` keeps its first channels, so a model converted
as it is keeps an arbitrary subset at narrow widths. Rewiring permutes the
channels of every sliced width group (the same permutation for every layer
that writes, follows or reads the group) so that the leading slice groups
hold the channels that matter most. A permutation of hidden channels
changes nothing at full width; it only decides what the narrow widths keep.

Importance scores, per channel of a group:
- `"l1"`: the L1 norm of each producing kernel's output slice, each layer's
  scores divided by their mean so that no one layer of a merged group
  dominates, summed over the group's producers;
- `"bn"`: `|gamma|` of the group's batch normalizations, scaled the same
  way (the l1 score where a group has none);
- `"taylor"`: first-order Taylor importance, `|sum(activation * gradient)|`
  of the loss over the data, summed over the group's tensors.
Groups holding group normalizations are permuted by whole normalization
groups, attention layers' heads by whole heads (by the L1 norm of their
value and output weights).

A sliced channel concatenation (`SlicedConcatenate`) has no order of its
own: its output holds its inputs' channels, each in its rewired order,
interleaved slice group by slice group, and the layers reading it take
their input weights in that order. The scores of its channels (e.g. of the
batch normalization after it) count for the inputs' channels they came
from.
"""

import math

import keras
import numpy as np

from keras_slicing.conversion import building
from keras_slicing.conversion import joins
from keras_slicing.layers.base import multiplied_order
from keras_slicing.layers.concatenate import interleaved_order

REWIRE_OPTIONS = (None, "l1", "bn", "taylor")
_GATES = {keras.layers.LSTM: 4, keras.layers.GRU: 3}
_SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)


class Permuter:
    """Each converted layer's weights, its channels in the rewired order.

    `orders[group]` lists, for each new channel position of a sliced width
    group, the original channel; groups without one keep their order.
    `head_orders[layer id]` does the same for attention heads.
    """

    def __init__(self, analysis, orders=None, head_orders=None):
        self.analysis = analysis
        self.orders = orders or {}
        self.head_orders = head_orders or {}
        self._joined = {}

    def feature_order(self, tensor):
        """For each feature of the converted tensor, the original feature."""
        analysis = self.analysis
        channels = analysis.channels.get(id(tensor))
        width = tensor.shape[-1]
        if channels is None or not analysis.sliced(tensor):
            return np.arange(width)
        order = self.channel_order(analysis.group_of(tensor))
        factor, flat = channels.factor, channels.flat
        if flat is None:
            if order is None:
                return np.arange(width)
            return multiplied_order(order, factor)
        positions, features = flat
        per_channel = factor // positions
        if order is None:
            order = np.arange(features // per_channel)
        # SlicedFlatten orders features channel by channel (`f * P + p`),
        # the original Flatten position by position (`p * F + f`).
        feature = (order[:, None] * per_channel + np.arange(per_channel)).reshape(-1)
        return (np.arange(positions)[None, :] * features + feature[:, None]).reshape(-1)

    def channel_order(self, group):
        """For each channel of a width group, the original channel, or None."""
        join = joins.writing(self.analysis, group)
        if join is None:
            return self.orders.get(group)
        if group not in self._joined:
            self._joined[group] = interleaved_order(
                [self.feature_order(x) for x in join.inputs],
                self.analysis.slice_groups,
            )
        return self._joined[group]

    def weights(self, node, layer, new):
        weights = building.copied_weights(layer, new)
        if type(new) is type(layer) and not _reads_flattened(self.analysis, node):
            return weights  # plain layers read and write full groups only
        inputs = self.analysis.graph.tensors_of(node)
        ins = [self.feature_order(x) for x in inputs]
        out = self.feature_order(node.outputs[0])
        paths = [v.path.split("/")[-2:] for v in layer.weights]
        if isinstance(layer, keras.layers.MultiHeadAttention):
            return self._attention(node, layer, weights, paths)
        if isinstance(layer, keras.layers.Embedding):
            return [weights[0][:, out]]
        if type(layer) in _GATES:
            return _recurrent(weights, paths, ins[0], out, _GATES[type(layer)])
        if isinstance(layer, _SEPARABLE):
            rows = multiplied_order(ins[0], layer.depth_multiplier)
            depthwise = weights[0][..., ins[0], :]
            pointwise = weights[1][..., rows, :][..., out]
            return [depthwise, pointwise] + [w[out] for w in weights[2:]]
        if isinstance(new, keras.layers.DepthwiseConv2D):  # or a grouped Conv2D
            result = [weights[0][:, :, ins[0], :]]
            return result + [w[out] for w in weights[1:]]
        if isinstance(layer, (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D)):
            kernel = weights[0][..., ins[0], :][..., out]
            return [kernel] + [w[out] for w in weights[1:]]
        # Normalizations: per-channel vectors, or (rows, channels) statistics.
        return [w[..., ins[0]] for w in weights]

    def _attention(self, node, layer, weights, paths):
        query = node.args[0] if node.args else node.kwargs["query"]
        value = node.args[1] if len(node.args) > 1 else node.kwargs["value"]
        heads = self.head_orders.get(id(layer), np.arange(layer.num_heads))
        q_in, v_in = self.feature_order(query), self.feature_order(value)
        out = self.feature_order(node.outputs[0])
        result = []
        for w, (part, kind) in zip(weights, paths):
            if part == "attention_output":
                w = w[heads][..., out] if kind == "kernel" else w[out]
            elif kind == "kernel":
                w = w[q_in if part == "query" else v_in][:, heads]
            else:
                w = w[heads]
            result.append(w)
        return result


def _reads_flattened(analysis, node):
    return any(
        analysis.channels.get(id(x)) is not None
        and analysis.channels[id(x)].flat is not None
        and analysis.sliced(x)
        for x in analysis.graph.tensors_of(node)
    )


def _gate_columns(order, units, gates):
    return np.concatenate([order + g * units for g in range(gates)])


def _recurrent(weights, paths, rows, out, gates):
    units = len(out)
    columns = _gate_columns(out, units, gates)
    result = []
    for w, (_, kind) in zip(weights, paths):
        if kind == "kernel":
            w = w[rows][:, columns]
        elif kind == "recurrent_kernel":
            w = w[out][:, columns]
        else:
            w = w[..., columns]
        result.append(w)
    return result


# ------------------------------------------------------------------ scores


def channel_orders(graph, analysis, rewire, data=None, loss=None):
    """`(orders, head_orders)` for a `Permuter` under the `rewire` option."""
    if rewire is None:
        return {}, {}
    scores = {}
    if rewire == "taylor":
        scores = _taylor_scores(graph, analysis, data, loss)
    elif rewire == "bn":
        scores = _scores(graph, analysis, _bn_score)
    if rewire != "taylor":
        l1 = _scores(graph, analysis, _l1_score)
        for group, score in l1.items():
            scores.setdefault(group, score)
    scores = joins.scores_through(analysis, scores)
    orders = {}
    for group, score in scores.items():
        orders[group] = _blocked_order(score, _block(analysis, group))
    head_orders = {}
    for node in graph.nodes:
        if isinstance(node.layer, keras.layers.MultiHeadAttention):
            head_orders[id(node.layer)] = _stable_descending(_head_score(node.layer))
    return orders, head_orders


def _scores(graph, analysis, score_fn):
    scores = {}
    seen = set()
    for node in graph.nodes:
        if id(node.layer) in seen or not node.outputs:
            continue
        seen.add(id(node.layer))
        y = node.outputs[0]
        if id(y) not in analysis.channels or not analysis.sliced(y):
            continue
        channels = analysis.channels[id(y)]
        if channels.factor != 1:
            continue
        score = score_fn(node)
        if score is None or not np.any(score):
            continue
        group = analysis.group_of(y)
        scores[group] = scores.get(group, 0.0) + score / np.mean(score)
    return scores


def _l1_score(node):
    layer = node.layer
    if isinstance(layer, keras.layers.MultiHeadAttention):
        kernel = np.asarray(layer.output_dense.kernel)
        return np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(0)
    if isinstance(layer, keras.layers.Embedding):
        return np.abs(np.asarray(layer.embeddings)).sum(0)
    if type(layer) in _GATES:
        kernel = np.asarray(layer.cell.kernel)
        units = layer.units
        blocks = kernel.reshape(kernel.shape[0], -1, units)
        return np.abs(blocks).sum((0, 1))
    if type(layer) in _SEPARABLE:
        kernel = np.asarray(layer.pointwise_kernel)
        return np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(0)
    if type(layer) in (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D):
        kernel = np.asarray(layer.kernel)
        return np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(0)
    return None


def _bn_score(node):
    layer = node.layer
    if isinstance(layer, keras.layers.BatchNormalization) and layer.scale:
        return np.abs(np.asarray(layer.gamma))
    return None


def _head_score(layer):
    value = np.abs(np.asarray(layer.value_dense.kernel)).sum((0, 2))
    output = np.abs(np.asarray(layer.output_dense.kernel)).sum((1, 2))
    return value / np.mean(value) + output / np.mean(output)


def _block(analysis, group):
    sizes = [s for g, per in analysis.gn_blocks.items()
             if analysis.groups.find(g) == group for s in per]
    return math.lcm(*sizes) if sizes else 1


def _blocked_order(score, block):
    score = np.asarray(score, dtype=np.float64)
    blocks = score.reshape(-1, block).sum(1)
    first = _stable_descending(blocks)
    return (first[:, None] * block + np.arange(block)).reshape(-1)


def _stable_descending(score):
    return np.argsort(-np.asarray(score), kind="stable")


def _taylor_scores(graph, analysis, data, loss):
    from keras_slicing.conversion import taylor

    return taylor.scores(graph, analysis, data, loss)
