"""First-order Taylor importance of each channel, measured on data.

The loss changes by about `sum(activation * gradient)` over a channel's
positions when the channel is removed (Molchanov et al., 2017). The
original graph is replayed with every sliced tensor multiplied by ones of
shape `(batch, 1, ..., 1, channels)`: the loss's gradient with respect to
them is exactly that sum, per example and channel, on every backend. The
magnitudes are added up over the examples.

Reference:
- [Molchanov et al., 2017](https://arxiv.org/abs/1611.06440), Pruning
  Convolutional Neural Networks for Resource Efficient Inference.
"""

import keras
import numpy as np

_BATCH = 64
_MAX_EXAMPLES = 1024


def scores(graph, analysis, data, loss):
    """`{group: score per channel}` of every sliced width group."""
    x, y = _split(data)
    loss_fn = _loss_function(graph, loss)
    probed = _probed_tensors(graph, analysis)
    if not probed:
        return {}
    totals = {id(t): np.zeros(t.shape[-1]) for t in probed}
    count = min(len(y), _MAX_EXAMPLES)
    for start in range(0, count, _BATCH):
        xs = [a[start:start + _BATCH] for a in x]
        ys = y[start:start + _BATCH]
        grads = _probe_gradients(graph, probed, loss_fn, xs, ys)
        for tensor, grad in zip(probed, grads):
            grad = np.abs(keras.ops.convert_to_numpy(grad))
            totals[id(tensor)] += grad.reshape(-1, grad.shape[-1]).sum(0)
    result = {}
    for tensor in probed:
        group = analysis.group_of(tensor)
        score = totals[id(tensor)]
        if np.any(score):
            result[group] = result.get(group, 0.0) + score / np.mean(score)
    return result


def _split(data):
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(
            "slice_model: rewire='taylor' needs data=(x, y): the inputs (an "
            "array, or a list of arrays for several inputs) and the targets. "
            f"Received: data of type {type(data).__name__}"
        )
    x, y = data
    x = [np.asarray(a) for a in (x if isinstance(x, (list, tuple)) else [x])]
    return x, np.asarray(y)


def _loss_function(graph, loss):
    if len(graph.outputs) != 1:
        if loss is None:
            raise ValueError(
                "slice_model: rewire='taylor' on a model with several outputs "
                "needs the loss the model was compiled with: compile it first."
            )
    if loss is None:
        return None  # chosen from the outputs, see _default_loss
    return keras.losses.get(loss)


def _default_loss(outputs, y):
    """Cross-entropy on probabilities or logits, whichever the model gives."""
    probabilities = bool(
        keras.ops.all(outputs >= 0)
        and keras.ops.all(keras.ops.abs(keras.ops.sum(outputs, axis=-1) - 1.0) < 1e-3)
    )
    return keras.losses.SparseCategoricalCrossentropy(from_logits=not probabilities)


def _probed_tensors(graph, analysis):
    probed = []
    for node in graph.nodes:
        for y in node.outputs:
            channels = analysis.channels.get(id(y))
            if (channels is not None and channels.factor == 1 and channels.flat is None
                    and analysis.sliced(y)):
                probed.append(y)
    return probed


def _replay(graph, probed, probes, xs):
    values = {id(x): keras.ops.convert_to_tensor(v) for x, v in zip(graph.inputs, xs)}
    scale = {id(t): p for t, p in zip(probed, probes)}
    for node in graph.nodes:
        args, kwargs = keras.tree.map_structure(
            lambda v: values[id(v)] if isinstance(v, keras.KerasTensor) else v,
            (node.args, node.kwargs),
        )
        outputs = keras.tree.flatten(node.layer(*args, **kwargs))
        for x, value in zip(node.outputs, outputs):
            if id(x) in scale:
                value = value * scale[id(x)]
            values[id(x)] = value
    return values[id(graph.outputs[0])]


def _probe_gradients(graph, probed, loss_fn, xs, ys):
    def loss_of(probes):
        outputs = _replay(graph, probed, probes, xs)
        fn = loss_fn or _default_loss(keras.ops.stop_gradient(outputs), ys)
        return fn(keras.ops.convert_to_tensor(ys), outputs)

    batch = len(ys)
    ones = [
        np.ones((batch, *[1] * (len(t.shape) - 2), t.shape[-1]), "float32")
        for t in probed
    ]
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        probes = [tf.constant(p) for p in ones]
        with tf.GradientTape() as tape:
            tape.watch(probes)
            value = loss_of(probes)
        return tape.gradient(value, probes)
    if backend == "jax":
        import jax

        return jax.grad(loss_of)([jax.numpy.asarray(p) for p in ones])
    if backend == "torch":
        import torch

        probes = [torch.ones(p.shape, requires_grad=True) for p in ones]
        return torch.autograd.grad(loss_of(probes), probes)
    raise ValueError(
        "slice_model: rewire='taylor' needs the TensorFlow, JAX or PyTorch "
        f"backend. Received: backend {backend!r}"
    )
