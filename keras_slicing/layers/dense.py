import keras
from keras import ops

from keras_slicing.layers.base import SlicedProjectionMixin


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

    _plain_class = keras.layers.Dense
    _width_arg = "units"

    def _full_width(self):
        return self.units

    def build(self, input_shape):
        super().build(input_shape)
        self._relax_input_spec(min_ndim=2)

    def call(self, inputs, rate=None, training=None):
        kernel, bias = self._active_kernel_and_bias(inputs, rate)
        x = ops.matmul(inputs, kernel)
        if bias is not None:
            x = ops.add(x, bias)
        if self.activation is not None:
            x = self.activation(x)
        return x
