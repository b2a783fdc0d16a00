"""Slicing on the PyTorch backend.

PyTorch runs eagerly: a rate tensor holds its values, which are read on the
host to size the slice (one device-to-host copy per layer call of a tensor
rate; a Python float costs nothing). Tensors without values (the meta and
fake tensors of shape inference and `torch.compile`) cannot size a slice.
"""

import torch
from torch.nn import functional

from keras_slicing.backend import common


def concrete_rate(rate, owner):
    """The rate as a Python float when it is known now, else None."""
    value = common.host_rate(rate, owner)
    if value is not None:
        return value
    if isinstance(rate, torch.Tensor):
        if rate.device.type == "meta" or _is_fake(rate):
            return None
        return common.rate_of_values(rate.detach().cpu().numpy(), owner)
    return None


def concrete_value(value):
    """A number, numpy value or tensor with values as a numpy array, else None."""
    array = common.host_array(value)
    if array is not None or not isinstance(value, torch.Tensor):
        return array
    if value.device.type == "meta" or _is_fake(value):
        return None
    return value.detach().cpu().numpy()


def _is_fake(tensor):
    try:
        from torch._subclasses.fake_tensor import is_fake
    except ImportError:  # private module moved: treat tensors as real
        return False
    return is_fake(tensor)


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


def packed(block):
    """A sliced block as a packed copy (PyTorch slices to a strided view).

    The oneDNN convolution backward of torch 2.13 on CPU crashes on some
    strided kernels (a 1x1 block of a wider 1x1 kernel, stride 2); the
    other backends' slice op makes a packed block anyway. A block that is
    the whole tensor is contiguous already and is returned as it is.
    """
    return block.contiguous()


def fused_group_norm(x, groups, gamma, beta, epsilon):
    """Group norm of channels-last `x` with PyTorch's fused kernel.

    Keras' composite group norm runs some ten element-wise ops and their
    gradients eagerly, over half of a sliced ResNet-20 step on this
    backend; the fused kernel is one pass each way. The channels-last data
    is viewed channels-first, without a copy.
    """
    outputs = functional.group_norm(torch.movedim(x, -1, 1), groups, gamma, beta, epsilon)
    return torch.movedim(outputs, 1, -1)
