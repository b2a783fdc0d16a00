"""What all sliced layers share: the `layer(x, rate)` call contract."""

import keras
import numpy as np
from keras import ops

from keras_slicing import backend
from keras_slicing import keras_internals
from keras_slicing import rates as rates_lib


def is_static_int(value, expected):
    """Whether a width or group count is known now and equals `expected`."""
    return isinstance(value, int) and value == expected


def leading_block(tensor, sizes):
    """`tensor[:sizes[0], :sizes[1], ...]`; `None` keeps a whole axis.

    One slice of the backend (`backend.leading_slice`), not strided
    slicing: its gradient is a pad, and a block that covers the whole
    tensor is forwarded without a copy.
    """
    if isinstance(tensor, keras.Variable):
        tensor = tensor.value  # JAX slices arrays, not variables
    shape = [
        tensor.shape[axis] if size is None else size
        for axis, size in enumerate(sizes)
    ]
    return backend.leading_slice(tensor, shape)


def plain_config(layer, name):
    """`layer`'s config without its slicing arguments, under `name`.

    The start of a sliced layer's `plain_layer(rate, input_shapes, name)`,
    which returns the standard Keras layer of one width and its weights (in
    the order of that layer's `weights`); `extract_submodel` calls it.
    """
    keys = ("slice_groups", "slice_input", "slice_output", "rates")
    config = {k: v for k, v in layer.get_config().items() if k not in keys}
    config["name"] = name
    return config


def _is_symbolic(values):
    return any(isinstance(v, keras.KerasTensor) for v in keras.tree.flatten(values))


def leading_values(variable, sizes):
    """The numpy value of `variable[:sizes[0], ...]`; `None` keeps an axis.

    `sizes` may be shorter than the rank: the trailing axes are kept whole.
    """
    value = np.asarray(ops.convert_to_numpy(variable))
    return value[tuple(slice(size) for size in sizes)]


def multiplied_order(order, depth_multiplier):
    """The order of a depthwise filter's outputs when it reads channels in `order`.

    Depthwise output `c * depth_multiplier + j` comes from input channel
    `c` (`DepthwiseConv2D`, and the first half of a separable convolution).
    """
    m = depth_multiplier
    return (np.asarray(order)[:, None] * m + np.arange(m)).reshape(-1)


def affine_values(layer, n):
    """A normalization layer's `gamma` and `beta` (those it has), first `n`."""
    return [
        leading_values(getattr(layer, name), [n])
        for name, present in (("gamma", layer.scale), ("beta", layer.center))
        if present
    ]


class SlicedLayerMixin:
    """Mixin placed before a Keras layer class in a sliced layer's bases.

    Keras refuses non-tensor positional call arguments, so the rate is passed
    on by keyword. A rate known now (a number, an array, an eager tensor) is
    validated here, before any tracing; and a run (not the building of a
    graph) checks the functional model it runs in, once
    (`keras_slicing.checks.check_called_model`).

    `keras_slicing.check_model` classifies a sliced layer by these
    attributes alone, so a new sliced layer needs no change there:
    - `follows_input_width` (class attribute): the output keeps each
      input's width, channel by channel (depthwise, normalization).
    - `narrows_channels` (property): otherwise, whether the output's last
      axis is sliced at a rate below 1 (`slice_output`); if not, the layer
      restores the full width.
    - `joins_inputs` (class attribute, `False` when absent): the layer
      joins several sliced tensors slice group by slice group
      (`SlicedConcatenate`); its output follows their width.
    - `slice_input` (attribute, `True` when absent): whether its tensor
      inputs may be sliced on their last axis; `False` for a layer reading
      the data (or integer ids). Every tensor argument but `rate` is an
      input; sequence outputs `(batch, time, features)` are sliced on the
      last axis like channels.
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
        try:
            rate = self._checked_call(inputs, rate, args)
        except ValueError as error:
            # The message names the rate or layers at fault; the model's
            # inputs Keras would append to it are the user's own data.
            raise keras_internals.without_call_arguments(error) from None
        return super().__call__(inputs, *args, rate=rate, **kwargs)

    def _checked_call(self, inputs, rate, args):
        """The rate of a call, validated when known; checks the model run."""
        if not _is_symbolic((inputs, rate, args)) and not backend.in_shape_inference():
            # A run, not the building of a graph: the model this call runs
            # in is checked once, before its first result. First, so that a
            # bad rate fed to that model is reported as the model's input.
            from keras_slicing import checks

            checks.check_called_model()
        scalar = (bool, np.bool_, str, bytes)
        if isinstance(rate, scalar) or rates_lib.static_rate(rate) is not None:
            rate = rates_lib.validate_rate(rate, self._owner())
        elif rate is not None:
            rates_lib.check_fed_rate(rate, inputs, self._owner())
        return rate

    def _groups(self, rate):
        return rates_lib.resolve_groups(rate, self.slice_groups, self._owner())

    @staticmethod
    def _static_rate(rate):
        return rates_lib.static_rate(rate)

    def plain_layer(self, rate, input_shapes, name):
        """The standard Keras layer this layer computes at `rate`, and weights.

        `input_shapes` are the shapes of the tensors the layer is called on
        at that rate; the weights are copies of the active ones, in the order
        of the returned layer's `weights`. `extract_submodel` builds a width
        from these, so every sliced layer implements it.
        """
        raise NotImplementedError(
            f"{self._owner()} does not implement plain_layer(rate, "
            "input_shapes, name), which returns the standard Keras layer of "
            "one width; extract_submodel needs it for every sliced layer."
        )

    def _check_divisible(self, width, arg_name):
        if width % self.slice_groups:
            raise ValueError(
                f"{self._owner()}: {arg_name}={width} is not divisible by "
                f"slice_groups={self.slice_groups}. Choose {arg_name} that is "
                "a multiple of slice_groups."
            )



class SlicedProjectionMixin(SlicedLayerMixin):
    """Dense and convolution layers: they choose their output width.

    The kernel's last two axes are (input features, output units); the
    layer reads as many input features as its input has and, when
    `slice_output`, produces the active groups of its `_full_width()` units.
    `_plain_class` is the standard Keras layer of one width and
    `_width_arg` the name of its width argument.
    """

    _plain_class = None
    _width_arg = None

    def _init_projection(self, slice_groups, slice_input, slice_output, arg_name):
        self._init_slicing(slice_groups)
        self.slice_input = bool(slice_input)
        self.slice_output = bool(slice_output)
        if self.slice_output:
            self._check_divisible(self._full_width(), arg_name)

    def _full_width(self):
        raise NotImplementedError

    def plain_layer(self, rate, input_shapes, name):
        """The standard Keras layer of the width of `rate`, and its weights."""
        n_in = input_shapes[0][-1]
        n_out = self._full_width()
        if self.slice_output:
            n_out = rates_lib.active_width(n_out, rate, self.slice_groups)
        config = plain_config(self, name)
        config[self._width_arg] = n_out
        rank = len(self.kernel.shape)
        weights = [leading_values(self.kernel, [None] * (rank - 2) + [n_in, n_out])]
        if self.use_bias:
            weights.append(leading_values(self.bias, [n_out]))
        return self._plain_class.from_config(config), weights

    def _relax_input_spec(self, **rank):
        if self.slice_input:
            # A sliced predecessor hands over fewer features than the kernel
            # expects, so only the rank is checked.
            self.input_spec = keras.layers.InputSpec(**rank)

    def _active_widths(self, inputs, rate, full_in):
        """`(n_in, n_out)` of a call, each None where it is the full width."""
        n_in = n_out = None
        if self.slice_input:
            n_in = backend.dim(inputs, -1)
            if is_static_int(n_in, full_in):
                n_in = None
        groups = self._groups(rate)
        if self.slice_output and not is_static_int(groups, self.slice_groups):
            n_out = groups * (self._full_width() // self.slice_groups)
        return n_in, n_out

    def _active_kernel_and_bias(self, inputs, rate):
        kernel, bias = self.kernel, self.bias
        n_in, n_out = self._active_widths(inputs, rate, kernel.shape[-2])
        if n_out is not None and bias is not None:
            bias = leading_block(bias, [n_out])
        if n_in is not None or n_out is not None:
            sizes = [None] * (len(kernel.shape) - 2) + [n_in, n_out]
            kernel = leading_block(kernel, sizes)
        return kernel, bias

    def compute_output_spec(self, inputs, rate=None, **kwargs):
        spec = super().compute_output_spec(inputs, rate=rate, **kwargs)
        static = self._static_rate(rate)
        if self.slice_output and static is not None:
            groups = self._groups(static)
            width = groups * (self._full_width() // self.slice_groups)
            shape = (*spec.shape[:-1], width)
            spec = keras.KerasTensor(shape, dtype=spec.dtype)
        return spec

    def get_config(self):
        return {
            **super().get_config(),
            "slice_groups": self.slice_groups,
            "slice_input": self.slice_input,
            "slice_output": self.slice_output,
        }


class SlicedConvolutionMixin(SlicedProjectionMixin):
    """Convolutions: the filters are the sliced width, channels last."""

    _width_arg = "filters"

    def _init_convolution(self, kwargs):
        """Refuses the arguments slicing does not cover; call before `super().__init__`."""
        owner = type(self).__name__
        if kwargs.get("groups", 1) != 1:
            raise ValueError(
                f"{owner} supports only groups=1 (grouped convolutions "
                f"are not sliced). Received: groups={kwargs['groups']}"
            )
        if kwargs.get("lora_rank"):
            raise ValueError(
                f"{owner} does not support LoRA. Received: "
                f"lora_rank={kwargs['lora_rank']}"
            )

    def _init_sliced_filters(self, slice_groups, slice_input, slice_output):
        """Checks the data format and sets up slicing; call after `super().__init__`."""
        if self.data_format != "channels_last":
            raise ValueError(
                f"{type(self).__name__} supports only data_format='channels_last'. "
                f"Received: data_format={self.data_format!r}"
            )
        self._init_projection(slice_groups, slice_input, slice_output, "filters")

    def _full_width(self):
        return self.filters

    def convolution_op(self, inputs, kernel):
        # A causal Conv1D has padded its inputs already.
        padding = "valid" if self.padding == "causal" else self.padding
        if backend.channels_last_conv is not None:
            return backend.channels_last_conv(
                inputs, kernel, tuple(self.strides), padding, tuple(self.dilation_rate)
            )
        return ops.conv(
            inputs, kernel, strides=list(self.strides), padding=padding,
            dilation_rate=self.dilation_rate, data_format=self.data_format,
        )

    def _bias_and_activation(self, outputs, bias):
        if bias is not None:
            outputs = ops.add(outputs, bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs


class SlicedSeparableConvolutionMixin(SlicedConvolutionMixin):
    """Separable convolutions: a depthwise filter, then sliced pointwise filters.

    The depthwise kernel `(*window, c_in, depth_multiplier)` follows the
    input's channels, as a depthwise convolution does; depthwise output
    `c * depth_multiplier + j` comes from input channel `c`, so the pointwise
    kernel `(*ones, c_in * depth_multiplier, filters)` reads a prefix of its
    rows and, when `slice_output`, writes the active groups of its columns.
    """

    def _active_kernels_and_bias(self, inputs, rate):
        depthwise, pointwise, bias = (
            self.depthwise_kernel, self.pointwise_kernel, self.bias
        )
        rank = len(depthwise.shape) - 2
        n_in, n_out = self._active_widths(inputs, rate, depthwise.shape[-2])
        if n_out is not None and bias is not None:
            bias = leading_block(bias, [n_out])
        if n_in is not None:
            depthwise = leading_block(depthwise, [None] * rank + [n_in, None])
        if n_in is not None or n_out is not None:
            rows = None if n_in is None else n_in * self.depth_multiplier
            pointwise = leading_block(pointwise, [None] * rank + [rows, n_out])
        return depthwise, pointwise, bias

    def call(self, inputs, rate=None):
        depthwise, pointwise, bias = self._active_kernels_and_bias(inputs, rate)
        outputs = ops.separable_conv(
            inputs,
            depthwise,
            pointwise,
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )
        return self._bias_and_activation(outputs, bias)

    def plain_layer(self, rate, input_shapes, name):
        """The standard separable convolution of the width of `rate`, and weights."""
        n_in = input_shapes[0][-1]
        n_out = self.filters
        if self.slice_output:
            n_out = rates_lib.active_width(n_out, rate, self.slice_groups)
        config = plain_config(self, name)
        config["filters"] = n_out
        rank = len(self.depthwise_kernel.shape) - 2
        weights = [
            leading_values(self.depthwise_kernel, [None] * rank + [n_in]),
            leading_values(
                self.pointwise_kernel,
                [None] * rank + [n_in * self.depth_multiplier, n_out],
            ),
        ]
        if self.use_bias:
            weights.append(leading_values(self.bias, [n_out]))
        return self._plain_class.from_config(config), weights
