import keras
from keras import ops

from keras_slicing import backend
from keras_slicing.layers.base import SlicedLayerMixin
from keras_slicing.layers.base import affine_values
from keras_slicing.layers.base import is_static_int
from keras_slicing.layers.base import leading_block
from keras_slicing.layers.base import plain_config


@keras.saving.register_keras_serializable(package="keras_slicing")
class SlicedLayerNormalization(SlicedLayerMixin, keras.layers.LayerNormalization):
    """A `LayerNormalization` layer over the active features only.

    The width follows the input: the mean and variance are taken over the
    active features (as a network built at that width would), and `gamma`
    and `beta` are sliced to them. Normalizes the last axis only.

    Args:
        slice_groups: Number of contiguous slice groups of the features; the
            full width must be divisible by it. Defaults to `8`.
        **kwargs: All other arguments of `keras.layers.LayerNormalization`
            (`axis` must be `-1`).

    Call arguments:
        inputs: Tensor whose last axis holds the active features.
        rate: The slice rate in (0, 1] (a Python float or a tensor of equal
            values); the width is taken from `inputs`.

    Example:

    >>> layer = SlicedLayerNormalization()
    >>> layer.build((None, 5, 32))
    >>> layer(np.random.rand(2, 5, 16), 0.5).shape
    TensorShape([2, 5, 16])

    Reference:
    - [Cai et al., 2020](https://arxiv.org/abs/1904.01831), Model Slicing.
    - [Ba et al., 2016](https://arxiv.org/abs/1607.06450), Layer
      Normalization.
    """

    follows_input_width = True

    def __init__(self, slice_groups=8, **kwargs):
        if kwargs.get("rms_scaling"):
            raise ValueError(
                "SlicedLayerNormalization does not support rms_scaling. "
                f"Received: rms_scaling={kwargs['rms_scaling']}"
            )
        axis = kwargs.get("axis", -1)
        if axis not in (-1, [-1], (-1,)):
            raise ValueError(
                "SlicedLayerNormalization supports only axis=-1 (the last "
                f"axis). Received: axis={axis}"
            )
        super().__init__(**kwargs)
        self._init_slicing(slice_groups)

    def build(self, input_shape):
        self._check_divisible(input_shape[-1], "features")
        super().build(input_shape)
        self._features = input_shape[-1]
        # A sliced predecessor hands over fewer features.
        self.input_spec = keras.layers.InputSpec(ndim=len(input_shape))

    def call(self, inputs, rate=None):
        self._groups(rate)  # validates the rate; the width follows inputs
        n = backend.dim(inputs, -1)
        gamma, beta = self.gamma, self.beta
        if not is_static_int(n, self._features):
            gamma = None if gamma is None else leading_block(gamma, [n])
            beta = None if beta is None else leading_block(beta, [n])
        # The parent's own op, so that full width reproduces it exactly; a
        # positive last axis spares it reshaping gamma to a static shape.
        outputs = ops.layer_normalization(
            inputs, gamma, beta, len(inputs.shape) - 1, self.epsilon,
            rms_scaling=False,
        )
        return ops.cast(outputs, self.compute_dtype)

    def plain_layer(self, rate, input_shapes, name):
        """A `keras.layers.LayerNormalization` of the input width, and weights."""
        n = input_shapes[0][-1]
        config = plain_config(self, name)
        config["axis"] = -1
        plain = keras.layers.LayerNormalization.from_config(config)
        return plain, affine_values(self, n)

    def get_config(self):
        return {**super().get_config(), "slice_groups": self.slice_groups}
