import keras
from keras import ops

from keras_slicing import backend
from keras_slicing.layers.base import SlicedLayerMixin
from keras_slicing.layers.base import affine_values
from keras_slicing.layers.base import plain_config


@keras.saving.register_keras_serializable(package="keras_slicing")
class SlicedGroupNormalization(SlicedLayerMixin, keras.layers.GroupNormalization):
    """A `GroupNormalization` layer that normalizes only the active channels.

    `groups` must be a multiple of `slice_groups`, so every normalization
    group lies inside one slice group: a group's statistics are then the same
    at every rate, which is why the paper prefers group normalization for
    sliced networks. The width follows the input; `gamma` and `beta` are
    sliced to it. Channels-last (`axis=-1`) only.

    Args:
        groups: Number of normalization groups of the full width; a multiple
            of `slice_groups`. Defaults to `32`.
        slice_groups: Number of contiguous slice groups of the channels.
            Defaults to `8`.
        **kwargs: All other arguments of `keras.layers.GroupNormalization`.

    Call arguments:
        inputs: Channels-last tensor holding the active channels.
        rate: The slice rate in (0, 1] (a Python float or a tensor of equal
            values); the width is taken from `inputs`.

    Example:

    >>> layer = SlicedGroupNormalization(groups=8)
    >>> layer.build((None, 4, 4, 32))
    >>> layer(np.random.rand(2, 4, 4, 16), 0.5).shape
    TensorShape([2, 4, 4, 16])

    Reference:
    - [Cai et al., 2020](https://arxiv.org/abs/1904.01831), Model Slicing.
    - [Wu & He, 2018](https://arxiv.org/abs/1803.08494), Group Normalization.
    """

    follows_input_width = True

    def __init__(self, groups=32, slice_groups=8, **kwargs):
        super().__init__(groups=groups, **kwargs)
        self._init_slicing(slice_groups)
        if self.axis not in (-1,):
            raise ValueError(
                "SlicedGroupNormalization supports only axis=-1 (channels "
                f"last). Received: axis={self.axis}"
            )
        if groups != -1 and groups % self.slice_groups:
            raise ValueError(
                f"{self._owner()}: groups={groups} is not a multiple of "
                f"slice_groups={self.slice_groups}. Each normalization group "
                "must lie inside one slice group; choose groups that is a "
                "multiple of slice_groups."
            )

    def build(self, input_shape):
        self._check_divisible(input_shape[-1], "channels")
        super().build(input_shape)
        self.input_spec = keras.layers.InputSpec(ndim=len(input_shape))
        self._channels_per_group = input_shape[-1] // self.groups

    def call(self, inputs, rate=None):
        self._groups(rate)  # validates the rate; the width follows inputs
        per_group = self._channels_per_group
        n = backend.dim(inputs, -1)
        # Upcast as the parent does: statistics overflow in float16.
        dtype = keras.backend.result_type(inputs.dtype, "float32")
        x = ops.cast(inputs, dtype)
        groups = n // per_group
        if backend.fused_group_norm is not None:
            gamma = ops.cast(self.gamma.value[:n], dtype) if self.scale else None
            beta = ops.cast(self.beta.value[:n], dtype) if self.center else None
            outputs = backend.fused_group_norm(x, groups, gamma, beta, self.epsilon)
            return ops.cast(outputs, self.compute_dtype)
        shape = ops.shape(x)
        grouped = ops.reshape(x, (*shape[:-1], groups, per_group))
        rank = len(grouped.shape)
        axes = list(range(1, rank - 2)) + [rank - 1]
        mean, variance = ops.moments(grouped, axes=axes, keepdims=True)
        # Same arithmetic as keras.layers.GroupNormalization, so that full
        # width reproduces it exactly.
        inv = ops.rsqrt(variance + self.epsilon)
        broadcast = [1] * (rank - 2) + [groups, per_group]
        if self.scale:
            gamma = ops.reshape(self.gamma[:n], broadcast)
            inv = inv * ops.cast(gamma, dtype)
        res = -mean * inv
        if self.center:
            beta = ops.reshape(self.beta[:n], broadcast)
            res = res + ops.cast(beta, dtype)
        outputs = ops.reshape(grouped * inv + res, shape)
        return ops.cast(outputs, self.compute_dtype)

    def plain_layer(self, rate, input_shapes, name):
        """A `keras.layers.GroupNormalization` of the input's channels.

        Its groups are the active ones, of the same channels each, so every
        group's statistics are those of the sliced layer.
        """
        n = input_shapes[0][-1]
        config = plain_config(self, name)
        config["groups"] = n // self._channels_per_group
        plain = keras.layers.GroupNormalization.from_config(config)
        return plain, affine_values(self, n)

    def get_config(self):
        return {**super().get_config(), "slice_groups": self.slice_groups}
