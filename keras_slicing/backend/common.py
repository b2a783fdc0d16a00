"""What every backend module shares: rates whose values are known now."""

import numbers

import numpy as np
from keras import ops

from keras_slicing import keras_internals


def _not_a_number(rate, owner):
    if getattr(rate, "ndim", 0):
        # An array's text could be the whole batch: its type says enough.
        received = f"an array of dtype {rate.dtype} and shape {tuple(rate.shape)}"
    else:
        value = rate.item() if hasattr(rate, "item") else rate
        received = f"rate={value!r}"[:80]
    return ValueError(
        f"{owner}: the slice rate must be a number in (0, 1] (or an array of "
        f"one repeated number per example). Received: {received}"
    )


def host_rate(rate, owner):
    """A Python, numpy or array rate as a float; None for other types.

    A rate vector must hold one repeated value; an empty one (e.g. one
    replica's share of a short last batch) has no rate and runs at full
    width, which computes nothing for zero examples.
    """
    if isinstance(rate, (bool, np.bool_, str, bytes)):
        raise _not_a_number(rate, owner)
    if isinstance(rate, (numbers.Real, np.number)):
        return float(rate)
    if isinstance(rate, np.ndarray):
        return rate_of_values(rate, owner)
    return None


def host_array(value):
    """A Python or numpy number or array as a numpy array; None otherwise.

    Booleans are no rate: they give None, and the caller refuses them;
    text gives an array of strings, which `rate_of_values` refuses.
    """
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (numbers.Real, np.number, np.ndarray, str, bytes)):
        return np.asarray(value)
    return None


def rate_of_values(values, owner):
    """The one rate held by an array of equal values, as a float.

    Only integer and float arrays are rates (not text that parses as a
    number, nor booleans); every entry must be in (0, 1], NaN refused as out
    of range, before their equality is checked.
    """
    array = np.asarray(values)
    if array.dtype.kind not in "iuf":
        raise _not_a_number(array, owner)
    values = array.astype(np.float64).reshape(-1)
    if values.size == 0:
        return 1.0
    outside = values[~((values > 0.0) & (values <= 1.0))]
    if outside.size:
        raise ValueError(
            f"{owner}: the slice rate must be in (0, 1]. Received: "
            f"rate={float(outside[0])!r}"
            + (f" (in a rate array of shape {array.shape})" if array.ndim else "")
        )
    if not np.all(values == values[0]):
        raise ValueError(
            f"{owner}: all entries of a slice-rate tensor must be equal "
            "(one width per batch). Received rates "
            f"{sorted(set(values.tolist()))}"
        )
    return float(values[0])


def in_shape_inference():
    """Whether Keras is inferring shapes (`compute_output_spec`), not running."""
    return keras_internals.in_symbolic_scope()


def eager_assert(condition, message):
    """Raises `ValueError(message)` unless `condition` (known now) holds."""
    if not bool(condition):
        raise ValueError(message)


def leading_slice(tensor, shape):
    """`tensor[:shape[0], :shape[1], ...]`, one slice op."""
    return ops.slice(tensor, [0] * len(shape), shape)
