"""Slicing on the PyTorch backend.

PyTorch runs eagerly: a rate tensor holds its values, which are read on the
host to size the slice (one device-to-host copy per layer call of a tensor
rate; a Python float costs nothing). Tensors without values (the meta and
fake tensors of shape inference and `torch.compile`) cannot size a slice.
"""

import torch
from keras import ops
from torch.nn import functional

from keras_slicing.backend import common
from keras_slicing.torch_internals import is_fake


def concrete_rate(rate, owner):
    """The rate as a Python float when it is known now, else None."""
    value = common.host_rate(rate, owner)
    if value is not None:
        return value
    if isinstance(rate, torch.Tensor):
        if rate.device.type == "meta" or is_fake(rate):
            return None
        return common.rate_of_values(rate.detach().cpu().numpy(), owner)
    return None


def concrete_value(value):
    """A number, numpy value or tensor with values as a numpy array, else None."""
    array = common.host_array(value)
    if array is not None or not isinstance(value, torch.Tensor):
        return array
    if value.device.type == "meta" or is_fake(value):
        return None
    return value.detach().cpu().numpy()


def is_tracing(tensor):
    """Whether `torch.compile` is capturing the code being run."""
    del tensor
    return torch.compiler.is_compiling()


def tensor_rate_groups(rate, slice_groups, owner):
    """Refuses a rate without values: it cannot size a slice.

    Keras' own shape inference runs `call` on meta tensors; there a rate
    stands for full width, as in the layers' `compute_output_shape`.
    """
    if common.in_shape_inference():
        return slice_groups
    raise ValueError(
        f"{owner}: the slice rate must hold values when the layer runs, "
        "since it sets the shapes of the computation. Received a tensor "
        f"without values ({type(rate).__name__} on device "
        f"{getattr(rate, 'device', None)}), e.g. under torch.compile. Pass a "
        "Python float, or run the model eagerly (jit_compile=False)."
    )


def dim(x, axis):
    """Size of `x` along `axis` (shapes are static in eager PyTorch)."""
    return x.shape[axis]


assert_true = common.eager_assert


def leading_slice(tensor, shape):
    """`tensor[:shape[0], :shape[1], ...]` as a packed copy.

    Indexing, not `keras.ops.slice`: a layer slices its weights at every
    call, and the Keras op's dispatch costs more than the copy of a small
    kernel. Packed as the other backends' slice op packs it, so that no
    kernel reaches a convolution as a strided view.
    """
    return tensor[tuple(slice(0, size) for size in shape)].contiguous()


def fused_group_norm(x, groups, gamma, beta, epsilon):
    """Group norm of channels-last `x` with PyTorch's fused kernel.

    Keras' composite group norm runs some ten element-wise ops and their
    gradients eagerly, over half of a sliced ResNet-20 step on this
    backend; the fused kernel is one pass each way. Its channels-last
    kernel crawls on 4 channels (a ResNet-20's first stage at r = 0.25),
    so fewer than 8 channels go through a channels-first copy. From 8
    channels on, the copies and the convolutions' mixed layouts behind them
    cost more than they save (`benchmarks/torch_ops.py`, before and after;
    docs/benchmarks.md).
    """
    few = x.shape[-1] < CHANNELS_LAST_GROUP_NORM_MIN
    x = torch.movedim(x, -1, 1)
    outputs = functional.group_norm(
        x.contiguous() if few else x, groups, gamma, beta, epsilon
    )
    outputs = torch.movedim(outputs, 1, -1)
    return outputs.contiguous() if few else outputs


# Fewest channels the channels-last group norm kernel is run on (see above).
CHANNELS_LAST_GROUP_NORM_MIN = 8


def channels_last_conv(inputs, kernel, strides, padding, dilation_rate):
    """A 1D or 2D convolution of channels-last data, `keras.ops.conv`'s result.

    Two reasons not to call `keras.ops.conv` here:
    - the weight gradient of torch 2.13's CPU convolution crashes the
      process (a segfault or a corrupted heap) for a strided 1x1 kernel
      with fewer than 8 input channels in channels-last memory, which is a
      sliced ResNet's shortcut at r = 0.25. A 1x1 convolution is a matrix
      product of the subsampled input, so it runs as one.
    - Keras copies channels-last data to channels-first and back to
      channels-last memory for every convolution; the channels-first view
      of channels-last data is channels-last memory already.
    """
    inputs, kernel = ops.convert_to_tensor(inputs), ops.convert_to_tensor(kernel)
    spatial = inputs.ndim - 2
    kernel_size = tuple(kernel.shape[:spatial])
    if all(size == 1 for size in kernel_size):
        index = (slice(None),) + tuple(slice(None, None, s) for s in strides)
        return torch.matmul(inputs[index], kernel.reshape(kernel.shape[-2:]))
    if padding == "same":
        pads = []
        for axis in range(spatial):
            size, stride = inputs.shape[1 + axis], strides[axis]
            extent = (kernel_size[axis] - 1) * dilation_rate[axis] + 1
            outputs = -(-size // stride)
            total = max((outputs - 1) * stride + extent - size, 0)
            pads.append((total // 2, total - total // 2))
        if all(before == after for before, after in pads):
            padding = tuple(before for before, _ in pads)
        else:  # TensorFlow's "same" puts the odd pixel last
            flat = [0, 0]  # channels, then the spatial axes from the last
            for before, after in reversed(pads):
                flat += [before, after]
            inputs = functional.pad(inputs, flat)
            padding = 0
    else:
        padding = 0
    weights = torch.permute(kernel, (spatial + 1, spatial, *range(spatial)))
    convolve = functional.conv1d if spatial == 1 else functional.conv2d
    outputs = convolve(
        torch.movedim(inputs, -1, 1), weights, stride=tuple(strides),
        padding=padding, dilation=tuple(dilation_rate),
    )
    return torch.movedim(outputs, 1, -1)
