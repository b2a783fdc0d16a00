import keras
import numpy as np
from keras import ops

from keras_slicing import rates as rates_lib
from keras_slicing.layers.base import SlicedLayerMixin
from keras_slicing.layers.base import is_static_int


def interleaved_order(input_orders, groups):
    """Where a `SlicedConcatenate` of `groups` active groups takes each channel.

    `input_orders` holds, per input, an index array over that input's
    channels (`np.arange(width)` for the channels as they are). The result
    gives, for each output channel, the channel of the plain concatenation
    of the inputs (`keras.layers.Concatenate`) that it holds.
    """
    parts, offset = [], 0
    for order in input_orders:
        order = np.asarray(order)
        parts.append((order + offset).reshape(groups, -1))
        offset += order.size
    return np.concatenate(parts, axis=1).reshape(-1)


@keras.saving.register_keras_serializable(package="keras_slicing")
class SlicedConcatenate(SlicedLayerMixin, keras.layers.Concatenate):
    """Joins sliced tensors on the channel axis, slice group by slice group.

    Each input's channels form `slice_groups` contiguous groups, of which
    the first `ceil(r * slice_groups)` are active at rate `r`. A plain
    `Concatenate` of two sliced tensors puts the active channels of the
    second after all channels of the first, so they are no prefix of the
    result. This layer lays its output out group by group instead: output
    group `j` is group `j` of the first input, then group `j` of the second,
    and so on. Its output is then a sliced tensor of `slice_groups` groups
    of `sum(channels_i) / slice_groups` channels, whose active groups are
    exactly those of its inputs, at every rate (a narrow width equals the
    full one with the inactive channels zeroed). At full width the output
    holds the channels of `keras.layers.Concatenate` in that interleaved
    order; the layers reading it take their input weights in the same order
    (`keras_slicing.slice_model` permutes them).

    Args:
        slice_groups: Number of contiguous groups of every input's channels;
            each input's full width must be divisible by it, and every
            input must be sliced with this many groups. Defaults to `8`.
        axis: The channel axis; only `-1` (the last) is supported.
            Defaults to `-1`.
        **kwargs: All other arguments of `keras.layers.Concatenate`.

    Call arguments:
        inputs: A list of tensors whose last axes hold their active channels
            (all at the same rate); the other axes must match.
        rate: The slice rate in (0, 1]: a Python float, or a tensor of equal
            values (e.g. from `keras_slicing.rate_input()`). `None` means
            full width.

    Example:

    >>> a = np.array([[0.0, 1.0, 2.0, 3.0]])
    >>> b = np.array([[10.0, 11.0]])
    >>> SlicedConcatenate(slice_groups=2)([a, b])
    # [[0., 1., 10., 2., 3., 11.]]
    >>> SlicedConcatenate(slice_groups=2)([a[:, :2], b[:, :1]], 0.5)
    # [[0., 1., 10.]]

    Reference:
    - [Cai et al., 2020](https://arxiv.org/abs/1904.01831), Model Slicing.
    """

    # `keras_slicing.check_model`: every input must be sliced alike, and the
    # output follows their width.
    joins_inputs = True

    def __init__(self, slice_groups=8, axis=-1, **kwargs):
        if axis != -1:
            raise ValueError(
                "SlicedConcatenate joins the channel axis only: axis=-1. "
                f"Received: axis={axis!r}"
            )
        super().__init__(axis=-1, **kwargs)
        self._init_slicing(slice_groups)

    @property
    def narrows_channels(self):
        """False: the output's width follows its inputs', set by their rate."""
        return False

    def call(self, inputs, rate=None):
        groups = self._groups(rate)
        inputs = list(inputs)
        if isinstance(groups, int):
            for i, x in enumerate(inputs):
                width = x.shape[-1]
                if width is not None and width % groups:
                    raise ValueError(
                        f"{self._owner()}: input {i} has {width} channels, "
                        f"which do not split into the {groups} active slice "
                        "groups of the rate. Every input must hold the "
                        "active groups of a tensor sliced with "
                        f"slice_groups={self.slice_groups}, at the rate "
                        "given here."
                    )
        if len(inputs) == 1 or is_static_int(groups, 1):
            return ops.concatenate(inputs, axis=-1)
        lead = ops.shape(inputs[0])[:-1]
        parts = [ops.reshape(x, (*lead, groups, -1)) for x in inputs]
        return ops.reshape(ops.concatenate(parts, axis=-1), (*lead, -1))

    def compute_output_spec(self, inputs, rate=None):
        # The inputs' active widths add up: the rate changes nothing more.
        return super().compute_output_spec(inputs)

    def plain_layer(self, rate, input_shapes, name):
        """A functional `keras.Model` of standard Keras computing this layer.

        `extract_submodel` does not need it: a cut width concatenates
        natively and folds the interleaving into the layers reading the
        join (`keras_slicing.cut_orders`).

        Each input is reshaped to `(..., groups, channels / groups)`, the
        parts are concatenated on the last axis and reshaped back; it has no
        weights (`None`). With every axis but the batch and the channels of
        known size, the reshapes have constant shapes (a TFLite file holds
        plain `RESHAPE`s); one axis may be of unknown size (`Reshape`
        layers, whose shapes are computed at run time); more are refused.
        """
        groups = rates_lib.active_groups(rate, self.slice_groups)
        inner = tuple(input_shapes[0][1:-1])
        unknown = inner.count(None)
        if unknown > 1:
            raise ValueError(
                f"{self._owner()}: a width of it is built from reshapes, "
                "which allow one axis of unknown size, but its inputs have "
                f"shapes {list(input_shapes)}. Give the model inputs of fixed "
                "spatial size."
            )

        def reshape(x, shape, step):
            if unknown:
                shape = tuple(-1 if size is None else size for size in shape)
                return keras.layers.Reshape(shape, name=f"{name}_{step}")(x)
            return ops.reshape(x, (-1, *shape))

        inputs = [
            keras.Input(batch_shape=shape, name=f"{name}_input_{i}")
            for i, shape in enumerate(input_shapes)
        ]
        parts = [
            reshape(x, (*inner, groups, shape[-1] // groups), f"groups_{i}")
            for i, (x, shape) in enumerate(zip(inputs, input_shapes))
        ]
        joined = keras.layers.Concatenate(name=f"{name}_join")(parts)
        width = sum(shape[-1] for shape in input_shapes)
        outputs = reshape(joined, (*inner, width), "channels")
        return keras.Model(inputs, outputs, name=name), None

    def get_config(self):
        return {**super().get_config(), "slice_groups": self.slice_groups}
