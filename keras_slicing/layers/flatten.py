import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_slicing")
class SlicedFlatten(keras.layers.Flatten):
    """Flattens a channels-last tensor channel by channel.

    A plain `Flatten` of a sliced channels-last feature map interleaves the
    active channels with the positions, so they do not form a prefix of the
    flattened vector and a following `SlicedDense` could not slice its kernel
    rows. This layer moves the channels to the front before flattening: the
    features of the first `c` channels are then exactly the first `c * H * W`
    entries, at every rate. Use it wherever a sliced convolution feeds a
    sliced dense layer through a flatten (VGG-style heads).

    Args:
        **kwargs: Arguments of `keras.layers.Layer` (`name`, `dtype`, ...).

    Call arguments:
        inputs: Channels-last tensor of rank 3 or more.

    Example:

    >>> SlicedFlatten()(np.arange(8.0).reshape(1, 2, 2, 2))
    # [[0., 2., 4., 6., 1., 3., 5., 7.]]

    Reference:
    - [Cai et al., 2020](https://arxiv.org/abs/1904.01831), Model Slicing.
    """

    def __init__(self, **kwargs):
        # Its input is channels-last by contract, whatever the global default.
        kwargs["data_format"] = "channels_last"
        super().__init__(**kwargs)

    def call(self, inputs):
        rank = len(inputs.shape)
        if rank > 2:
            inputs = ops.transpose(inputs, [0, rank - 1, *range(1, rank - 1)])
        return super().call(inputs)
