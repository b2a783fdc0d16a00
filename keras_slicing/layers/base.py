"""What all sliced layers share: the `layer(x, rate)` call contract."""

import keras
from keras import ops

from keras_slicing import rates as rates_lib


def is_static_int(value, expected):
    """Whether a width or group count is known now and equals `expected`."""
    return isinstance(value, int) and value == expected


def leading_block(tensor, sizes):
    """`tensor[:sizes[0], :sizes[1], ...]`; `None` keeps a whole axis.

    A single slice op (not strided slicing): its gradient is a pad, and a
    block that covers the whole tensor is forwarded without a copy.
    """
    shape = [
        tensor.shape[axis] if size is None else size
        for axis, size in enumerate(sizes)
    ]
    return ops.slice(tensor, [0] * len(shape), shape)


class SlicedLayerMixin:
    """Mixin placed before a Keras layer class in a sliced layer's bases.

    Keras refuses non-tensor positional call arguments, so the rate is passed
    on by keyword; a Python rate is validated here, before any tracing.
    """

    # Width-following layers (depthwise, normalization) keep their input's
    # width instead of choosing one from the rate.
    follows_input_width = False

    @property
    def narrows_channels(self):
        """Whether the output may be narrower than the full width."""
        return getattr(self, "slice_output", True) and not self.follows_input_width

    def _init_slicing(self, slice_groups):
        self.slice_groups = rates_lib.validate_slice_groups(
            slice_groups, self._owner()
        )
        # A tensor rate gives dynamic shapes, which XLA cannot compile; this
        # keeps `jit_compile="auto"` from choosing XLA on a GPU.
        self.supports_jit = False

    def _owner(self):
        name = getattr(self, "name", None)
        if name:
            return f"{type(self).__name__} '{name}'"
        return type(self).__name__

    def __call__(self, inputs, rate=None, *args, **kwargs):
        if isinstance(rate, (int, float)) and not isinstance(rate, bool):
            rate = rates_lib.validate_rate(rate, self._owner())
        return super().__call__(inputs, *args, rate=rate, **kwargs)

    def _groups(self, rate):
        return rates_lib.resolve_groups(rate, self.slice_groups, self._owner())

    @staticmethod
    def _static_rate(rate):
        if isinstance(rate, (int, float)) and not isinstance(rate, bool):
            return float(rate)
        return None

    def _check_divisible(self, width, arg_name):
        if width % self.slice_groups:
            raise ValueError(
                f"{self._owner()}: {arg_name}={width} is not divisible by "
                f"slice_groups={self.slice_groups}. Choose {arg_name} that is "
                "a multiple of slice_groups."
            )

    def _output_spec_with_width(self, spec, width):
        shape = list(spec.shape)
        shape[-1] = width
        return keras.KerasTensor(tuple(shape), dtype=spec.dtype)
