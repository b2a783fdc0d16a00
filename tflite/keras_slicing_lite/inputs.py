"""Checking a batch against a bundle's input spec, and converting it.

The implementation of `Bundle.prepare`. It is separate from `bundle.py`
because every entry point that takes examples (`predict`, the cascade, the
elastic server, the HTTP server) funnels through it, and its rules (rank and
shape, float casting, quantizing floats, narrowing token ids) depend only on
the manifest's input spec and quantization, never on the interpreters.
"""

import numpy as np


def prepare(x, input_shape, model_dtype, quantization, owner):
    """See `Bundle.prepare`.

    Args:
        x: The batch, array-like.
        input_shape: The manifest's input shape, `None` for the batch axis.
        model_dtype: The model's input `np.dtype`.
        quantization: `(scale, zero_point)` of the input tensor; a scale of 0
            means not quantized.
        owner: The name errors start with.
    """
    try:
        x = np.asarray(x)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{owner}: x is not array-like: {error}") from None
    expected = tuple(input_shape)
    shown = format_shape(expected)
    if x.ndim != len(expected):
        hint = (
            " For a single example add the batch axis: x[None]."
            if x.ndim == len(expected) - 1
            else ""
        )
        raise ValueError(
            f"{owner}: expected input of shape {shown}. "
            f"Received: x.shape={x.shape}.{hint}"
        )
    for axis, (want, got) in enumerate(zip(expected[1:], x.shape[1:]), 1):
        if want is not None and want != got:
            raise ValueError(
                f"{owner}: expected input of shape {shown}; axis {axis} "
                f"should be {want}. Received: x.shape={x.shape}"
            )
    if model_dtype.kind == "f":
        if x.dtype.kind != "f":
            raise ValueError(
                f"{owner}: this bundle takes floating inputs "
                f"({model_dtype.name}). Received: x.dtype={x.dtype}. "
                "Convert (and scale) the data as in training first."
            )
        return np.ascontiguousarray(x, dtype=model_dtype)
    if x.dtype == model_dtype:
        return np.ascontiguousarray(x)
    scale, zero_point = quantization
    if x.dtype.kind in "iu" and scale == 0:
        # Token ids of another integer width: cast when every id fits.
        info = np.iinfo(model_dtype)
        if x.size and (x.min() < info.min or x.max() > info.max):
            raise ValueError(
                f"{owner}: ids must fit {model_dtype.name}. Received "
                f"values in [{x.min()}, {x.max()}]"
            )
        return np.ascontiguousarray(x, model_dtype)
    if x.dtype.kind == "f" and scale > 0:
        info = np.iinfo(model_dtype)
        q = np.round(x / scale) + zero_point
        return np.ascontiguousarray(np.clip(q, info.min, info.max), model_dtype)
    accepted = f"{model_dtype.name}" + (" or floating" if scale > 0 else "")
    raise ValueError(
        f"{owner}: this bundle takes {accepted} inputs. "
        f"Received: x.dtype={x.dtype}"
    )


def format_shape(shape):
    """A shape as errors show it: `(batch, 8, 8, 1)`."""
    return "(" + ", ".join("batch" if i == 0 else str(d) for i, d in enumerate(shape)) + ")"
