import keras
from keras import ops

from keras_slicing import backend
from keras_slicing.layers.base import SlicedLayerMixin
from keras_slicing.layers.base import is_static_int
from keras_slicing.layers.base import leading_block


@keras.saving.register_keras_serializable(package="keras_slicing")
class SlicedConv2D(SlicedLayerMixin, keras.layers.Conv2D):
    """A `Conv2D` layer that convolves only the active slice of its filters.

    The filters are split into `slice_groups` contiguous groups; at rate `r`
    the first `ceil(r * slice_groups)` groups are active. The layer reads as
    many input channels as its input has and convolves with the matching
    block `kernel[:, :, :c_in, :c_out]`: cost falls with the square of the
    rate. Channels-last layout only.

    Args:
        filters: Positive integer, full number of output channels.
        kernel_size: As in `keras.layers.Conv2D`.
        slice_groups: Number of contiguous groups the filters are split into.
            `filters` must be divisible by it when `slice_output=True`.
            Defaults to `8`.
        slice_input: Whether the input may have fewer channels than at build
            time. Use `False` for the layer that reads the image. Defaults to
            `True`.
        slice_output: Whether the output channels are sliced. Defaults to
            `True`.
        **kwargs: All other arguments of `keras.layers.Conv2D` (`groups` must
            stay 1, `data_format` must be `"channels_last"`).

    Call arguments:
        inputs: Channels-last 4D tensor holding the active input channels.
        rate: The slice rate in (0, 1]: a Python float, or a tensor of equal
            values (e.g. from `keras_slicing.rate_input()`). `None` means
            full width.

    Example:

    >>> layer = SlicedConv2D(32, 3, padding="same", slice_input=False)
    >>> layer(np.ones((1, 8, 8, 3)), 0.25).shape
    TensorShape([1, 8, 8, 8])

    Reference:
    - [Cai et al., 2020](https://arxiv.org/abs/1904.01831), Model Slicing.
    """

    def __init__(
        self,
        filters,
        kernel_size,
        slice_groups=8,
        slice_input=True,
        slice_output=True,
        **kwargs,
    ):
        if kwargs.get("groups", 1) != 1:
            raise ValueError(
                "SlicedConv2D supports only groups=1 (grouped convolutions "
                f"are not sliced). Received: groups={kwargs['groups']}"
            )
        if kwargs.get("lora_rank"):
            raise ValueError(
                "SlicedConv2D does not support LoRA. Received: "
                f"lora_rank={kwargs['lora_rank']}"
            )
        super().__init__(filters, kernel_size, **kwargs)
        if self.data_format != "channels_last":
            raise ValueError(
                "SlicedConv2D supports only data_format='channels_last'. "
                f"Received: data_format={self.data_format!r}"
            )
        self._init_slicing(slice_groups)
        self.slice_input = bool(slice_input)
        self.slice_output = bool(slice_output)
        if self.slice_output:
            self._check_divisible(filters, "filters")

    def build(self, input_shape):
        super().build(input_shape)
        if self.slice_input:
            # A sliced predecessor hands over fewer channels than the kernel
            # expects, so only the rank is checked.
            self.input_spec = keras.layers.InputSpec(ndim=4)

    def call(self, inputs, rate=None):
        kernel = self.kernel
        bias = self.bias if self.use_bias else None
        n_in = n_out = None
        if self.slice_input:
            n_in = backend.dim(inputs, -1)
            if is_static_int(n_in, kernel.shape[2]):
                n_in = None
        groups = self._groups(rate)
        if self.slice_output and not is_static_int(groups, self.slice_groups):
            n_out = groups * (self.filters // self.slice_groups)
            if bias is not None:
                bias = leading_block(bias, [n_out])
        if n_in is not None or n_out is not None:
            kernel = leading_block(kernel, [None, None, n_in, n_out])
        outputs = self.convolution_op(inputs, kernel)
        if bias is not None:
            outputs = ops.add(outputs, bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def compute_output_spec(self, inputs, rate=None, **kwargs):
        spec = super().compute_output_spec(inputs, rate=rate, **kwargs)
        static = self._static_rate(rate)
        if self.slice_output and static is not None:
            width = self._groups(static) * (self.filters // self.slice_groups)
            spec = self._output_spec_with_width(spec, width)
        return spec

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "slice_groups": self.slice_groups,
                "slice_input": self.slice_input,
                "slice_output": self.slice_output,
            }
        )
        return config
