"""The slice-rate contract: the one place where a rate becomes a width.

A layer's width is split into `slice_groups` contiguous groups. A rate `r` in
(0, 1] activates the first `ceil(round(r * slice_groups, 6))` groups (at least
one); the rounding makes `r = k / slice_groups` give exactly `k` groups despite floating
point error, and any rate in (0, 1] is valid.
"""

import math
import numbers

import keras
import numpy as np

from keras_slicing import backend

DEFAULT_SLICE_GROUPS = 8
DEFAULT_RATES = (1.0, 0.75, 0.5, 0.25)


def validate_slice_groups(slice_groups, owner):
    if (
        isinstance(slice_groups, bool)
        or not isinstance(slice_groups, (int, np.integer))
        or slice_groups < 1
    ):
        raise ValueError(
            f"{owner}: slice_groups must be a positive integer. "
            f"Received: slice_groups={slice_groups!r}"
        )
    return int(slice_groups)


def static_rate(rate):
    """A Python or numpy scalar rate as a float; None for tensors and None."""
    if isinstance(rate, (bool, np.bool_)):
        return None
    if isinstance(rate, (numbers.Real, np.number)):
        return float(rate)
    return None


def validate_rate(rate, owner="rate"):
    """Returns `rate` as a Python float, or raises a `ValueError`."""
    if isinstance(rate, (bool, np.bool_, str, bytes)):
        raise ValueError(
            f"{owner}: the slice rate must be a number in (0, 1]. "
            f"Received: rate={rate!r}"[:200]
        )
    try:
        value = float(rate)
    except (TypeError, ValueError):
        raise ValueError(
            f"{owner}: the slice rate must be a number in (0, 1]. "
            f"Received: rate of type {type(rate).__name__}"
        ) from None
    if not (0.0 < value <= 1.0):  # also rejects NaN
        raise ValueError(
            f"{owner}: the slice rate must be in (0, 1]. Received: rate={rate!r}"
        )
    return value


def validate_rates(rates, owner="rates"):
    """Validates a non-empty sequence of rates; returns a tuple of floats."""
    if isinstance(rates, (int, float)) or rates is None:
        raise ValueError(
            f"{owner}: expected a non-empty list of slice rates in (0, 1]. "
            f"Received: rates={rates!r}"
        )
    rates = tuple(validate_rate(r, owner) for r in rates)
    if not rates:
        raise ValueError(
            f"{owner}: expected a non-empty list of slice rates in (0, 1]. "
            "Received: rates=()"
        )
    return rates


def active_groups(rate, slice_groups):
    """Number of active groups at `rate` (at least one)."""
    return max(1, math.ceil(round(float(rate) * slice_groups, 6)))


def active_width(width, rate, slice_groups):
    """Active units/channels of a layer of `width` at a Python `rate`."""
    return active_groups(rate, slice_groups) * (width // slice_groups)


def format_rate(rate):
    """The canonical text of a rate, as used in metric names and files."""
    return format(float(rate), "g")


def rate_input(name="slice_rate"):
    """The model input that carries the slice rate: one value per example.

    All entries of a batch must be equal; `SlicingModel` and the helpers of
    this package fill it for you.
    """
    return keras.Input(shape=(), name=name, dtype="float32")


def rate_vector(rate, batch_size, owner="rate"):
    """A fed rate as the `(batch_size,)` float32 vector a rate input takes.

    Accepts a number or a numeric array (or eager tensor) of shape `()`,
    `(N,)` or `(N, 1)`, N being the batch size, whose entries are one rate
    in (0, 1]; anything else is refused, naming the allowed values and
    shapes. A symbolic tensor is returned as it is.
    """
    value = backend.concrete_value(rate)
    if value is None:
        return rate
    backend.rate_of_values(value, owner)
    value = value.astype(np.float32)
    if value.shape == ():
        return np.full((batch_size,), value, np.float32)
    if value.shape in ((batch_size,), (batch_size, 1)):
        return value.reshape(batch_size)
    raise ValueError(
        f"{owner}: a slice rate is fed as a number or an array of shape "
        f"(N,) or (N, 1), N = {batch_size} being the number of examples. "
        f"Received: rate of shape {value.shape}"
    )


def check_fed_rate(rate, inputs, owner):
    """Refuses a rate known now that `rate_vector` would refuse.

    `inputs` are the call's tensors; the first one's leading axis is the
    batch. Symbolic rates and inputs of unknown batch size pass.
    """
    first = keras.tree.flatten(inputs)[:1]
    batch = getattr(first[0], "shape", (None,)) if first else (None,)
    batch = batch[0] if len(batch) else None
    if isinstance(batch, int):
        rate_vector(rate, batch, owner)
    else:
        value = backend.concrete_value(rate)
        if value is not None:
            backend.rate_of_values(value, owner)


def resolve_groups(rate, slice_groups, owner):
    """Active groups for a call-time rate.

    A Python number or a concrete (eager) tensor gives a Python int, so shapes
    stay static. A symbolic tensor gives, on TensorFlow, an int32 scalar
    tensor checked in the graph, so one traced function serves every rate;
    JAX and PyTorch refuse it (see `keras_slicing.backend`).
    """
    if rate is None:
        return slice_groups
    value = backend.concrete_rate(rate, owner)
    if value is not None:
        return active_groups(validate_rate(value, owner), slice_groups)
    return backend.tensor_rate_groups(rate, slice_groups, owner)
