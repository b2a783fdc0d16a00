import keras
from keras import ops

from keras_slicing.layers.base import SlicedLayerMixin
from keras_slicing.layers.base import SlicedProjectionMixin
from keras_slicing.layers.flatten import SlicedFlatten


@keras.saving.register_keras_serializable(package="keras_slicing")
class SlicedDense(SlicedProjectionMixin, keras.layers.Dense):
    """A `Dense` layer that computes only the active slice of its units.

    The units are split into `slice_groups` contiguous groups; at rate `r` the
    first `ceil(r * slice_groups)` groups are active. The layer reads as many
    features as its input has (a narrower input uses the first kernel rows)
    and multiplies by the active block of the kernel only: cost falls with
    the square of the rate.

    Args:
        units: Positive integer, full width of the output.
        slice_groups: Number of contiguous groups the units are split into.
            `units` must be divisible by it when `slice_output=True`.
            Defaults to `8`.
        slice_input: Whether the input may be narrower than at build time
            (it comes from a sliced layer). Use `False` for a layer that reads
            the data. Defaults to `True`.
        slice_output: Whether the output is sliced. Use `False` for the layer
            that produces the logits. Defaults to `True`.
        **kwargs: All other arguments of `keras.layers.Dense`.

    Call arguments:
        inputs: Input tensor whose last axis holds the active features.
        rate: The slice rate in (0, 1]: a Python float, or a tensor of equal
            values (e.g. from `keras_slicing.rate_input()`). `None` means
            full width.

    Example:

    >>> layer = SlicedDense(16, slice_groups=4, slice_input=False)
    >>> layer(np.ones((2, 8)), 0.5).shape
    TensorShape([2, 8])

    Reference:
    - [Cai et al., 2020](https://arxiv.org/abs/1904.01831), Model Slicing.
    """

    def __init__(
        self,
        units,
        slice_groups=8,
        slice_input=True,
        slice_output=True,
        **kwargs,
    ):
        if kwargs.get("lora_rank"):
            raise ValueError(
                "SlicedDense does not support LoRA. Received: "
                f"lora_rank={kwargs['lora_rank']}"
            )
        super().__init__(units, **kwargs)
        self._init_projection(slice_groups, slice_input, slice_output, "units")

    def _full_width(self):
        return self.units

    def build(self, input_shape):
        super().build(input_shape)
        self._relax_input_spec(min_ndim=2)

    def __call__(self, inputs, rate=None, *args, **kwargs):
        if self.slice_input:
            _check_prefix_layout(inputs, self._owner())
        return super().__call__(inputs, rate, *args, **kwargs)

    def call(self, inputs, rate=None, training=None):
        kernel, bias = self._active_kernel_and_bias(inputs, rate)
        x = ops.matmul(inputs, kernel)
        if bias is not None:
            x = ops.add(x, bias)
        if self.activation is not None:
            x = self.activation(x)
        return x


def _check_prefix_layout(inputs, owner):
    """Refuses a channels-last `Flatten`/`Reshape` of sliced channels.

    After such a layer the active features are spread over the vector rather
    than forming its prefix, so reading the first kernel rows would silently
    compute a different model.
    """
    history = getattr(inputs, "_keras_history", None)
    if history is None:
        return
    operation = history.operation
    if isinstance(operation, SlicedFlatten) or not isinstance(
        operation, (keras.layers.Flatten, keras.layers.Reshape)
    ):
        return
    node = operation._inbound_nodes[history.node_index]
    source = node.input_tensors[0]
    if len(source.shape) <= 2:
        return
    sliced = _sliced_producer(source)
    if sliced is not None:
        raise ValueError(
            f"{owner}: its input comes from {type(operation).__name__} "
            f"'{operation.name}', which flattens the channels-last output of "
            f"sliced layer '{sliced.name}'. The active channels are then not "
            "a prefix of the flattened features, and slicing the kernel rows "
            "would compute a different model. Use "
            "keras_slicing.layers.SlicedFlatten(), which flattens channels "
            "first, or global pooling instead."
        )


def _sliced_producer(tensor):
    """The sliced layer whose narrowed channels reach `tensor`, if any."""
    pending = [tensor]
    seen = set()
    while pending:
        history = getattr(pending.pop(), "_keras_history", None)
        if history is None:
            continue
        operation = history.operation
        if id(operation) in seen:
            continue
        seen.add(id(operation))
        if isinstance(operation, SlicedLayerMixin):
            if operation.narrows_channels:
                return operation
            if not operation.follows_input_width:
                continue
        if operation.weights or isinstance(operation, keras.layers.InputLayer):
            continue  # a plain weighted layer needs (and restores) full width
        node = operation._inbound_nodes[history.node_index]
        pending.extend(node.input_tensors)
    return None
