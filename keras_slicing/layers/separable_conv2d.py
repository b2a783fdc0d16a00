import keras

from keras_slicing.layers.base import SlicedSeparableConvolutionMixin


@keras.saving.register_keras_serializable(package="keras_slicing")
class SlicedSeparableConv2D(SlicedSeparableConvolutionMixin, keras.layers.SeparableConv2D):
    """A `SeparableConv2D` layer that convolves only the active slice.

    The depthwise filter runs on the input's channels, as many as it has;
    the pointwise filters are split into `slice_groups` contiguous groups,
    and at rate `r` the first `ceil(r * slice_groups)` groups are active.
    The layer reads the kernels' leading blocks, `depthwise_kernel[:, :,
    :c_in, :]` and `pointwise_kernel[:, :, :c_in * depth_multiplier,
    :c_out]`, so both halves of its cost fall with the rate. A width cut out
    of a model is a plain `SeparableConv2D`. Channels-last layout only.

    Args:
        filters: Positive integer, full number of output channels.
        kernel_size: As in `keras.layers.SeparableConv2D`.
        slice_groups: Number of contiguous groups the filters are split into.
            `filters` must be divisible by it when `slice_output=True`.
            Defaults to `8`.
        slice_input: Whether the input may have fewer channels than at build
            time. Use `False` for a layer that reads the image. Defaults to
            `True`.
        slice_output: Whether the output channels are sliced. Defaults to
            `True`.
        **kwargs: All other arguments of `keras.layers.SeparableConv2D`
            (`data_format` must be `"channels_last"`).

    Call arguments:
        inputs: Channels-last 4D tensor holding the active input channels.
        rate: The slice rate in (0, 1]: a Python float, or a tensor of equal
            values (e.g. from `keras_slicing.rate_input()`). `None` means
            full width.

    Example:

    >>> layer = SlicedSeparableConv2D(32, 3, padding="same")
    >>> layer.build((None, 8, 8, 16))
    >>> layer(np.ones((1, 8, 8, 8)), 0.5).shape
    TensorShape([1, 8, 8, 16])

    Reference:
    - [Cai et al., 2020](https://arxiv.org/abs/1904.01831), Model Slicing.
    - [Chollet, 2017](https://arxiv.org/abs/1610.02357), Xception.
    """

    _plain_class = keras.layers.SeparableConv2D

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
