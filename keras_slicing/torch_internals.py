"""The private PyTorch API keras-slicing relies on, in one place.

The PyTorch counterpart of `keras_internals.py`, imported only on the
PyTorch backend. Imported when this module is, so a PyTorch release that
moves it fails at import, here, naming the PyTorch version. No fallback.
"""

import torch

try:
    # `torch.compile` traces with fake tensors, which hold no values: a rate
    # among them cannot size a slice, and reading one must not be tried.
    from torch._subclasses.fake_tensor import is_fake  # noqa: F401
except ImportError as error:
    raise ImportError(
        "keras_slicing relies on torch._subclasses.fake_tensor.is_fake, which "
        f"torch {torch.__version__} does not have (it was written against "
        "PyTorch 2.2 to 2.13). Install a PyTorch version in that range, or a "
        f"keras_slicing release that supports torch {torch.__version__}."
    ) from error
