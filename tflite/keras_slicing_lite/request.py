"""A request to an `ElasticServer`, its response, and its entry in the queue."""

import dataclasses
import math
import numbers

import numpy as np

from keras_slicing_lite import outputs


@dataclasses.dataclass
class Request:
    """One example to answer before a deadline.

    Args:
        x: A single example, shaped like the bundle input without the batch
            axis.
        arrival_s: When the request arrives, in seconds on the server's
            clock (from the start of `ElasticServer.replay`). Defaults to 0.
        deadline_s: When the answer is due, on the same clock. Defaults to
            never.
        id: Any identifier; `replay` numbers requests when it is `None`.
        rate: A rate of the server to answer at, or `None` (the default) to
            let the server choose.

    Example:

    >>> Request(image, arrival_s=0.010, deadline_s=0.030)
    """

    x: np.ndarray
    arrival_s: float = 0.0
    deadline_s: float = math.inf
    id: object = None
    rate: float = None


@dataclasses.dataclass
class Response:
    """The answer to a `Request`; a late answer is still an answer.

    Attributes:
        id: The request's id.
        output: The float32 output row of the model.
        rate: The width that answered.
        batch_size: Requests answered by the same call (before padding).
        arrival_s, start_s, finish_s, deadline_s: Times on the server clock.
        output_kind: What the output means (see `outputs.py`); sets how
            `prediction` reads it.
    """

    id: object
    output: np.ndarray
    rate: float
    batch_size: int
    arrival_s: float
    start_s: float
    finish_s: float
    deadline_s: float
    output_kind: str = "multiclass"

    @property
    def latency_ms(self):
        """Milliseconds from arrival to answer, queueing included."""
        return (self.finish_s - self.arrival_s) * 1e3

    @property
    def late(self):
        """Whether the answer came after the deadline."""
        return self.finish_s > self.deadline_s

    @property
    def prediction(self):
        """The answer, read by `output_kind`: the arg-max class (multiclass),
        0 or 1 (binary), a list of 0/1 per label (multi-label), the value
        (a float for one output, else a list) for regression."""
        value = np.asarray(outputs.predictions(self.output_kind, self.output[None])[0])
        if self.output_kind == "regression" and value.size == 1:
            return float(value.reshape(()))
        return value.item() if value.ndim == 0 else value.tolist()


# Fields of a queue entry, a tuple ordered by deadline, then arrival order.
DEADLINE, SEQUENCE, ID, ARRIVAL, EXAMPLE, FUTURE, RATE = range(7)


def is_number(value, inf_ok=False):
    """Whether `value` is a real number (not a bool, not NaN; finite unless `inf_ok`)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        value = float(value)
    except OverflowError:  # an integer of hundreds of digits
        return False
    return not math.isnan(value) and (inf_ok or math.isfinite(value))
