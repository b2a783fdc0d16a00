import keras
from keras import ops

from keras_slicing import rates as rates_lib
from keras_slicing.layers.base import SlicedLayerMixin
from keras_slicing.layers.base import is_static_int
from keras_slicing.layers.base import leading_block
from keras_slicing.layers.base import plain_config


@keras.saving.register_keras_serializable(package="keras_slicing")
class SlicedEmbedding(SlicedLayerMixin, keras.layers.Embedding):
    """An `Embedding` layer that looks up only the active embedding features.

    The embedding dimension is split into `slice_groups` contiguous groups;
    at rate `r` the first `ceil(r * slice_groups)` groups are active and the
    lookup reads only those columns of the table. The layer reads token ids,
    so its input is never sliced (`slice_input` is `False`).

    Args:
        input_dim: Size of the vocabulary (maximum id + 1).
        output_dim: Full embedding dimension; divisible by `slice_groups`
            when `slice_output=True`.
        slice_groups: Number of contiguous groups of the embedding features.
            Defaults to `8`.
        slice_output: Whether the output features are sliced. Defaults to
            `True`.
        **kwargs: All other arguments of `keras.layers.Embedding` (LoRA and
            quantization are not supported).

    Call arguments:
        inputs: Integer tensor of token ids.
        rate: The slice rate in (0, 1]: a Python float, or a tensor of equal
            values (e.g. from `keras_slicing.rate_input()`). `None` means
            full width.

    Example:

    >>> layer = SlicedEmbedding(100, 32, slice_groups=4)
    >>> layer(np.array([[1, 2, 3]]), 0.5).shape
    TensorShape([1, 3, 16])

    Reference:
    - [Cai et al., 2020](https://arxiv.org/abs/1904.01831), Model Slicing.
    """

    # Token ids are never sliced.
    slice_input = False

    def __init__(self, input_dim, output_dim, slice_groups=8, slice_output=True,
                 **kwargs):
        for arg in ("lora_rank", "quantization_config"):
            if kwargs.get(arg):
                raise ValueError(
                    f"SlicedEmbedding does not support {arg}. Received: "
                    f"{arg}={kwargs[arg]!r}"
                )
        super().__init__(input_dim, output_dim, **kwargs)
        self._init_slicing(slice_groups)
        self.slice_output = bool(slice_output)
        if self.slice_output:
            self._check_divisible(output_dim, "output_dim")

    def _active_width(self, rate):
        groups = self._groups(rate)
        if not self.slice_output or is_static_int(groups, self.slice_groups):
            return None
        return groups * (self.output_dim // self.slice_groups)

    def call(self, inputs, rate=None):
        if inputs.dtype not in ("int32", "int64"):
            inputs = ops.cast(inputs, "int32")
        table = self.embeddings
        n = self._active_width(rate)
        if n is not None:
            table = leading_block(table, [None, n])
        outputs = ops.take(table, inputs, axis=0)
        return ops.cast(outputs, self.compute_dtype)

    def compute_output_spec(self, inputs, rate=None):
        spec = super().compute_output_spec(inputs)
        static = self._static_rate(rate)
        if self.slice_output and static is not None:
            width = rates_lib.active_width(self.output_dim, static, self.slice_groups)
            spec = keras.KerasTensor((*spec.shape[:-1], width), dtype=spec.dtype)
        return spec

    def plain_layer(self, rate, input_shapes, name):
        """A `keras.layers.Embedding` of the width of `rate`, and its weights."""
        width = self.output_dim
        if self.slice_output:
            width = rates_lib.active_width(width, rate, self.slice_groups)
        config = plain_config(self, name)
        config["output_dim"] = width
        table = ops.convert_to_numpy(self.embeddings)[:, :width]
        return keras.layers.Embedding.from_config(config), [table]

    def active_cost(self, rate, input_shapes, output_shapes):
        """Parameters and MACs at the widths of `output_shapes`: a lookup is free."""
        return self.input_dim * output_shapes[0][-1], 0

    def get_config(self):
        return {
            **super().get_config(),
            "slice_groups": self.slice_groups,
            "slice_output": self.slice_output,
        }

