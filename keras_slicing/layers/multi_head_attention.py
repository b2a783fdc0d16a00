import keras
import numpy as np
from keras import ops

from keras_slicing import backend
from keras_slicing import keras_internals
from keras_slicing import rates as rates_lib
from keras_slicing.layers.base import SlicedLayerMixin
from keras_slicing.layers.base import is_static_int
from keras_slicing.layers.base import leading_block
from keras_slicing.layers.base import plain_config

_UNSUPPORTED = {
    "use_gate": False,
    "sliding_window": None,
    "flash_attention": None,
}


@keras.saving.register_keras_serializable(package="keras_slicing")
class SlicedMultiHeadAttention(SlicedLayerMixin, keras.layers.MultiHeadAttention):
    """A `MultiHeadAttention` layer that runs only the active heads.

    The heads are the slice groups: at rate `r` the first
    `ceil(r * num_heads)` heads are active. The query, key and value
    projections compute only those heads (their kernels' head blocks), the
    output projection reads only them, and every projection reads as many
    input features as its input has. The result equals the full layer with
    the inactive heads removed (their output-projection rows dropped).

    Without `output_shape`, the output has the width of the query, as in
    Keras: a query narrowed by a sliced residual stream gives an equally
    narrow output (the first columns of the output projection), and a
    full-width query (MatFormer-style, only the heads sliced) a full one.

    Args:
        num_heads: Number of attention heads, also the number of slice
            groups.
        key_dim: Size of each head for query and key.
        slice_input: Whether query and value may have fewer features than at
            build time (they come from sliced layers). Defaults to `True`.
        **kwargs: All other arguments of `keras.layers.MultiHeadAttention`.
            `output_shape` may be `None` or an integer. Not supported:
            `use_gate`, `attention_axes` (attention runs over the time axis
            of `(batch, time, features)` inputs), `sliding_window`,
            `flash_attention`.

    Call arguments:
        query: A `(batch, T, features)` tensor.
        value: A `(batch, S, features)` tensor; also the key (a separate key
            tensor is not supported).
        rate: The slice rate in (0, 1]: a Python float, or a tensor of equal
            values (e.g. from `keras_slicing.rate_input()`). `None` means
            all heads.
        attention_mask: Optional boolean `(batch, T, S)` mask, as in Keras.
        use_causal_mask: Whether each position attends only to itself and
            earlier positions.
        return_attention_scores: Whether to also return the `(batch,
            active heads, T, S)` attention probabilities.
        training: Whether attention dropout is applied.

    Example:

    >>> layer = SlicedMultiHeadAttention(num_heads=4, key_dim=8)
    >>> x = np.ones((2, 5, 16))
    >>> layer(x, x, rate=0.5).shape
    TensorShape([2, 5, 16])

    Reference:
    - [Cai et al., 2020](https://arxiv.org/abs/1904.01831), Model Slicing.
    - [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762), Attention
      Is All You Need.
    - [Kudugunta et al., 2023](https://arxiv.org/abs/2310.07707), MatFormer.
    """

    def __init__(self, num_heads, key_dim, slice_input=True, **kwargs):
        for arg, allowed in _UNSUPPORTED.items():
            if kwargs.get(arg, allowed) != allowed:
                raise ValueError(
                    f"SlicedMultiHeadAttention does not support {arg}. "
                    f"Allowed: {arg}={allowed!r}. Received: {arg}={kwargs[arg]!r}"
                )
        axes = kwargs.get("attention_axes")
        # A built layer's config holds the time axis, (1,).
        if axes is not None and tuple(np.atleast_1d(axes)) not in ((1,), (-2,)):
            raise ValueError(
                "SlicedMultiHeadAttention attends over the time axis of "
                "(batch, time, features) inputs only. Allowed: "
                f"attention_axes=None. Received: attention_axes={axes!r}"
            )
        output_shape = kwargs.get("output_shape")
        if isinstance(output_shape, (list, tuple)) and len(output_shape) == 1:
            output_shape = output_shape[0]  # as a saved config holds it
        if output_shape is not None and (
            isinstance(output_shape, bool) or not isinstance(output_shape, int)
        ):
            raise ValueError(
                "SlicedMultiHeadAttention: output_shape must be None (the "
                "query's width) or an integer. Received: "
                f"output_shape={output_shape!r}"
            )
        super().__init__(num_heads, key_dim, **kwargs)
        self._init_slicing(num_heads)
        self.slice_input = bool(slice_input)
        # Without output_shape the output keeps the query's width, as a
        # normalization keeps its input's; with one it is never narrowed.
        self._output_width = output_shape
        self.follows_input_width = output_shape is None
        self.slice_output = output_shape is None

    def __call__(self, query, value, key=None, rate=None, **kwargs):
        if key is not None and key is not value:
            raise ValueError(
                f"{self._owner()}: a separate key tensor is not supported; "
                "the value is also the key. Received a key of shape "
                f"{getattr(key, 'shape', None)}"
            )
        for name, tensor in (("query", query), ("value", value)):
            if keras_internals.keras_mask(tensor) is not None:
                raise ValueError(
                    f"{self._owner()}: the {name} carries a Keras mask, which "
                    "is not supported. Pass attention_mask= instead."
                )
        return super().__call__(query, rate, value, **kwargs)

    def build(self, query_shape, value_shape, key_shape=None):
        for name, shape in (("query", query_shape), ("value", value_shape)):
            if len(shape) != 3:
                raise ValueError(
                    f"{self._owner()}: expected a (batch, time, features) "
                    f"{name}. Received: {name}_shape={shape}"
                )
        super().build(query_shape, value_shape, key_shape)

    def _heads(self, rate):
        groups = self._groups(rate)
        return None if is_static_int(groups, self.num_heads) else groups

    def _projection(self, dense, inputs, heads):
        kernel, bias = dense.kernel, dense.bias
        n_in = backend.dim(inputs, -1)
        if not self.slice_input or is_static_int(n_in, kernel.shape[0]):
            n_in = None
        if n_in is not None or heads is not None:
            kernel = leading_block(kernel, [n_in, heads, None])
        x = ops.einsum("btd,dnh->btnh", inputs, kernel)
        if bias is not None:
            if heads is not None:
                bias = leading_block(bias, [heads, None])
            x = ops.add(x, bias)
        return x

    def call(self, query, value, key=None, attention_mask=None,
             return_attention_scores=False, training=None,
             use_causal_mask=False, rate=None):
        # `key` is always None (refused in __call__); build() needs its name.
        heads = self._heads(rate)
        q = self._projection(self.query_dense, query, heads)
        k = self._projection(self.key_dense, value, heads)
        v = self._projection(self.value_dense, value, heads)
        q = ops.multiply(q, ops.cast(self._inverse_sqrt_key_dim, q.dtype))
        scores = ops.einsum("bsnh,btnh->bnts", k, q)
        mask = self._mask(query, value, attention_mask, use_causal_mask)
        if mask is not None:
            # As keras.layers.Softmax masks: a large negative addend.
            large = -3e4 if scores.dtype == "float16" else -1e9
            scores = scores + (1.0 - ops.cast(mask, scores.dtype)) * large
        probabilities = ops.softmax(scores, axis=-1)
        weights = probabilities
        if self.dropout > 0.0:
            weights = self._dropout_layer(probabilities, training=training)
        attended = ops.einsum("bnts,bsnh->btnh", weights, v)
        outputs = self._output(attended, query, heads)
        if return_attention_scores:
            return outputs, probabilities
        return outputs

    def _mask(self, query, value, attention_mask, use_causal_mask):
        mask = None
        if attention_mask is not None:
            mask = ops.expand_dims(ops.cast(attention_mask, "bool"), 1)
        if use_causal_mask:
            ones = ops.ones((1, 1, ops.shape(query)[1], ops.shape(value)[1]), "int32")
            causal = ops.greater_equal(
                ops.cumsum(ones, axis=-2), ops.cumsum(ones, axis=-1)
            )
            mask = causal if mask is None else ops.logical_and(mask, causal)
        return mask

    def _output(self, attended, query, heads):
        dense = self.output_dense
        kernel, bias = dense.kernel, dense.bias
        n_out = None
        if self._output_width is None:
            n_out = backend.dim(query, -1)
            if is_static_int(n_out, kernel.shape[-1]):
                n_out = None
        if heads is not None or n_out is not None:
            kernel = leading_block(kernel, [heads, None, n_out])
        outputs = ops.einsum("btnh,nhd->btd", attended, kernel)
        if bias is not None:
            if n_out is not None:
                bias = leading_block(bias, [n_out])
            outputs = ops.add(outputs, bias)
        return outputs

    def compute_output_spec(self, query, value, key=None, attention_mask=None,
                            return_attention_scores=False, training=None,
                            use_causal_mask=False, rate=None):
        width = self._output_width or query.shape[-1]
        output = keras.KerasTensor((*query.shape[:-1], width), dtype=self.compute_dtype)
        if not return_attention_scores:
            return output
        heads = self.num_heads
        static = self._static_rate(rate)
        if static is not None:
            heads = rates_lib.active_groups(static, self.num_heads)
        scores = keras.KerasTensor(
            (query.shape[0], heads, query.shape[1], value.shape[1]),
            dtype=self.compute_dtype,
        )
        return output, scores

    def plain_layer(self, rate, input_shapes, name):
        """A `keras.layers.MultiHeadAttention` of the active heads, and weights."""
        heads = rates_lib.active_groups(rate, self.num_heads)
        query_shape, value_shape = input_shapes[0], input_shapes[1]
        n_out = self._output_width or query_shape[-1]
        config = plain_config(self, name)
        config["num_heads"] = heads
        weights = []
        for dense, n_in in (
            (self.query_dense, query_shape[-1]),
            (self.key_dense, value_shape[-1]),
            (self.value_dense, value_shape[-1]),
        ):
            weights.append(ops.convert_to_numpy(dense.kernel)[:n_in, :heads])
            if dense.bias is not None:
                weights.append(ops.convert_to_numpy(dense.bias)[:heads])
        weights.append(ops.convert_to_numpy(self.output_dense.kernel)[:heads, :, :n_out])
        if self.output_dense.bias is not None:
            weights.append(ops.convert_to_numpy(self.output_dense.bias)[:n_out])
        return keras.layers.MultiHeadAttention.from_config(config), weights

    def active_cost(self, rate, input_shapes, output_shapes):
        """Parameters of the active heads; MACs of projections and attention."""
        (_, t, d_q), (_, s, d_v) = input_shapes[0], input_shapes[1]
        if t is None or s is None:
            raise ValueError(
                f"model_cost: {self._owner()} reads sequences of unknown "
                "length, so its cost per example is not fixed. Give the "
                "model input a time length."
            )
        d_out = output_shapes[0][-1]
        heads = rates_lib.active_groups(rate, self.num_heads)
        k, v = heads * self.key_dim, heads * self.value_dim
        bias = int(bool(self.use_bias))
        params = (d_q + bias) * k + (d_v + bias) * (k + v) + (v + bias) * d_out
        macs = t * d_q * k + s * d_v * (k + v) + t * s * (k + v) + t * v * d_out
        return params, macs

    def get_config(self):
        return {**super().get_config(), "slice_input": self.slice_input}
