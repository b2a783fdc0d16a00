import keras

from keras_slicing.layers.base import SlicedConvolutionMixin


@keras.saving.register_keras_serializable(package="keras_slicing")
class SlicedConv2D(SlicedConvolutionMixin, keras.layers.Conv2D):
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

    _plain_class = keras.layers.Conv2D

    def __init__(
        self,
        filters,
        kernel_size,
        slice_groups=8,
        slice_input=True,
        slice_output=True,
        **kwargs,
    ):
        self._init_convolution(kwargs)
        super().__init__(filters, kernel_size, **kwargs)
        self._init_sliced_filters(slice_groups, slice_input, slice_output)

    def build(self, input_shape):
        super().build(input_shape)
        self._relax_input_spec(ndim=4)

    def call(self, inputs, rate=None):
        kernel, bias = self._active_kernel_and_bias(inputs, rate)
        outputs = self.convolution_op(inputs, kernel)
        return self._bias_and_activation(outputs, bias)
