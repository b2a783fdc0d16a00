import keras
from keras import ops

from keras_slicing import backend
from keras_slicing.layers.base import SlicedLayerMixin
from keras_slicing.layers.base import is_static_int
from keras_slicing.layers.base import leading_block
from keras_slicing.layers.base import leading_values
from keras_slicing.layers.base import plain_config


@keras.saving.register_keras_serializable(package="keras_slicing")
class SlicedDepthwiseConv2D(SlicedLayerMixin, keras.layers.DepthwiseConv2D):
    """A `DepthwiseConv2D` layer whose width follows its sliced input.

    A depthwise convolution filters each channel on its own, so at any rate
    it convolves exactly the channels its input has, with the kernel slice
    `kernel[:, :, :c_in, :]` and the first `c_in * depth_multiplier` biases.
    The rate is accepted (and validated) for a uniform call contract. Output
    channel `c * depth_multiplier + j` comes from input channel `c`, so the
    active outputs stay a prefix. Channels-last layout only.

    Args:
        kernel_size: As in `keras.layers.DepthwiseConv2D`.
        slice_groups: Number of contiguous groups of the input channels,
            which must be divisible by it. Defaults to `8`.
        **kwargs: All other arguments of `keras.layers.DepthwiseConv2D`
            (`data_format` must be `"channels_last"`).

    Call arguments:
        inputs: Channels-last 4D tensor holding the active channels.
        rate: The slice rate in (0, 1] (a Python float or a tensor of equal
            values); the width is taken from `inputs`.

    Example:

    >>> layer = SlicedDepthwiseConv2D(3, padding="same")
    >>> layer.build((None, 8, 8, 16))
    >>> layer(np.ones((1, 8, 8, 8)), 0.5).shape
    TensorShape([1, 8, 8, 8])

    Reference:
    - [Cai et al., 2020](https://arxiv.org/abs/1904.01831), Model Slicing.
    """

    follows_input_width = True

    def __init__(self, kernel_size, slice_groups=8, **kwargs):
        super().__init__(kernel_size, **kwargs)
        if self.data_format != "channels_last":
            raise ValueError(
                "SlicedDepthwiseConv2D supports only "
                f"data_format='channels_last'. Received: "
                f"data_format={self.data_format!r}"
            )
        self._init_slicing(slice_groups)

    def build(self, input_shape):
        self._check_divisible(input_shape[-1], "input channels")
        super().build(input_shape)
        self.input_spec = keras.layers.InputSpec(ndim=4)

    def call(self, inputs, rate=None):
        self._groups(rate)  # validates the rate; the width follows inputs
        kernel = self.kernel
        bias = self.bias if self.use_bias else None
        n_in = backend.dim(inputs, -1)
        if not is_static_int(n_in, kernel.shape[2]):
            kernel = leading_block(kernel, [None, None, n_in, None])
            if bias is not None:
                bias = leading_block(bias, [n_in * self.depth_multiplier])
        outputs = ops.depthwise_conv(
            inputs,
            kernel,
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )
        if bias is not None:
            outputs = ops.add(outputs, bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def plain_layer(self, rate, input_shapes, name):
        """A `keras.layers.DepthwiseConv2D` of the input's channels, and weights."""
        n_in = input_shapes[0][-1]
        weights = [leading_values(self.kernel, [None, None, n_in])]
        if self.use_bias:
            weights.append(leading_values(self.bias, [n_in * self.depth_multiplier]))
        plain = keras.layers.DepthwiseConv2D.from_config(plain_config(self, name))
        return plain, weights

    def get_config(self):
        return {**super().get_config(), "slice_groups": self.slice_groups}
