import keras
from keras import ops

from keras_slicing import backend
from keras_slicing import keras_internals
from keras_slicing.layers.base import SlicedLayerMixin
from keras_slicing.layers.base import is_static_int
from keras_slicing.layers.base import leading_block
from keras_slicing.layers.base import leading_values
from keras_slicing.layers.base import plain_config


@keras.saving.register_keras_serializable(package="keras_slicing")
class SlicedLayerScale(SlicedLayerMixin, keras.layers.Layer):
    """A learned per-channel scale, `x * gamma`, over the active channels.

    The layer scale of ConvNeXt and CaiT: each channel of the residual
    branch multiplied by its own weight. Its width follows its input: at
    any rate it scales the channels its input has with the first entries
    of `gamma`. `slice_model` converts the `LayerScale` layers of
    `keras.applications.ConvNeXt*` to it, and a width cut out of a model
    holds that layer again.

    Args:
        init_values: Float, the initial value of every entry of `gamma`.
        projection_dim: Positive integer, the full number of channels; it
            must be divisible by `slice_groups`.
        slice_groups: Number of contiguous slice groups of the channels.
            Defaults to `8`.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Call arguments:
        inputs: Tensor whose last axis holds the active channels.
        rate: The slice rate in (0, 1] (a Python float or a tensor of equal
            values); the width is taken from `inputs`.

    Example:

    >>> layer = SlicedLayerScale(1e-6, 32)
    >>> layer(np.ones((1, 4, 4, 8)), 0.25).shape
    TensorShape([1, 4, 4, 8])

    Reference:
    - [Cai et al., 2020](https://arxiv.org/abs/1904.01831), Model Slicing.
    - [Touvron et al., 2021](https://arxiv.org/abs/2103.17239), CaiT.
    """

    follows_input_width = True

    def __init__(self, init_values, projection_dim, slice_groups=8, **kwargs):
        super().__init__(**kwargs)
        self.init_values = init_values
        self.projection_dim = projection_dim
        self._init_slicing(slice_groups)
        self._check_divisible(projection_dim, "projection_dim")

    def build(self, input_shape):
        self.gamma = self.add_weight(
            name="gamma",
            shape=(self.projection_dim,),
            initializer=keras.initializers.Constant(self.init_values),
            trainable=True,
        )

    def call(self, inputs, rate=None):
        self._groups(rate)  # validates the rate; the width follows inputs
        gamma = self.gamma
        n = backend.dim(inputs, -1)
        if not is_static_int(n, self.projection_dim):
            gamma = leading_block(gamma, [n])
        return ops.multiply(inputs, gamma)

    def compute_output_shape(self, input_shape):
        return input_shape

    def plain_layer(self, rate, input_shapes, name):
        """ConvNeXt's `LayerScale` of the input's channels, and its weight."""
        n = input_shapes[0][-1]
        config = plain_config(self, name)
        config["projection_dim"] = n
        plain = keras_internals.LayerScale.from_config(config)
        return plain, [leading_values(self.gamma, [n])]

    def get_config(self):
        return {
            **super().get_config(),
            "init_values": self.init_values,
            "projection_dim": self.projection_dim,
            "slice_groups": self.slice_groups,
        }
