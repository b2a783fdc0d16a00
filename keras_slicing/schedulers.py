"""Rate schedulers: which slice rates a training step of `SlicingModel` runs.

The paper's code offers five schedules, available by name: `"random"`,
`"random_min"`, `"random_max"`, `"random_min_max"` and `"all"`. Any object
implementing the small `RateScheduler` interface can be used instead.
"""

import math

import keras
import numpy as np
from keras import ops

SCHEDULER_NAMES = ("random", "random_min", "random_max", "random_min_max", "all")


__all__ = [
    "AllScheduler",
    "RandomScheduler",
    "RateScheduler",
    "get",
]


class RateScheduler:
    """Base class of rate schedulers: chooses the rates of each training step.

    `SlicingModel` calls the scheduler inside its compiled train step, so
    `sample` must draw its randomness from `keras.random` with the `seed` it
    is given (never Python or NumPy randomness): the step is traced once and
    every execution draws new rates. `rates` is always the model's tuple of
    rates, widest first (`SlicingModel.rates`).

    A subclass implements:
    - `num_rates(rates)`: how many rates one step runs (a Python int).
    - `sample(rates, seed)`: an int32 tensor of shape `(num_rates(rates),)`
      holding indices into `rates`. Order does not matter (the model runs
      them widest first, the widest being the teacher of in-place
      distillation), and a repeated index adds nothing to the loss or the
      metrics.
    - `validate(rates)` (optional): raise a `ValueError` when the scheduler
      cannot serve these rates.
    - `get_config()`, and register the class with
      `keras.saving.register_keras_serializable` so saved models reload.

    Example:

    >>> class WidestAndRandom(RateScheduler):
    ...     def num_rates(self, rates):
    ...         return 2
    ...     def sample(self, rates, seed):
    ...         other = keras.random.randint((1,), 0, len(rates), seed=seed)
    ...         return ops.concatenate([ops.zeros((1,), "int32"), other])
    """

    def validate(self, rates):
        del rates

    def num_rates(self, rates):
        raise NotImplementedError

    def sample(self, rates, seed):
        raise NotImplementedError

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_slicing")
class RandomScheduler(RateScheduler):
    """Draws `num_random` distinct rates, optionally always adding the ends.

    With `include_max` the widest rate runs every step, with `include_min`
    the narrowest (the "sandwich rule" of Universally Slimmable Networks
    when both are set); the `num_random` others are drawn without
    replacement from the remaining rates, with probability proportional to
    `probabilities` (Gumbel top-k, done in the graph). When fewer rates are
    left (e.g. `rates=(1.0, 0.5)` with both ends always run), all of them
    run: the same arguments serve any number of rates.

    Args:
        num_random: Number of rates drawn at random each step, at most the
            number of rates left. Defaults to 1.
        probabilities: Optional non-negative weights, one per model rate
            (widest first); those of the always-run rates are ignored.
            Defaults to uniform.
        include_min: Whether the narrowest rate runs every step.
        include_max: Whether the widest rate runs every step.

    Example:

    >>> scheduler = RandomScheduler(num_random=1, include_min=True,
    ...                             include_max=True)  # "random_min_max"
    >>> scheduler.sample((1.0, 0.75, 0.5, 0.25), keras.random.SeedGenerator(0))
    # e.g. [0, 3, 2]: 1.0, 0.25 and one of 0.75 / 0.5

    Reference:
    - [Cai et al., 2020](https://arxiv.org/abs/1904.01831), Model Slicing.
    - [Yu & Huang, 2019](https://arxiv.org/abs/1903.05134), Universally
      Slimmable Networks.
    """

    def __init__(
        self, num_random=1, probabilities=None, include_min=False, include_max=False
    ):
        if (
            isinstance(num_random, bool)
            or not isinstance(num_random, (int, np.integer))
            or num_random < 0
        ):
            raise ValueError(
                "RandomScheduler: num_random must be a non-negative integer. "
                f"Received: num_random={num_random!r}"
            )
        if num_random == 0 and not (include_min or include_max):
            raise ValueError(
                "RandomScheduler: num_random=0 runs no rate unless "
                "include_min or include_max is set. Received: num_random=0"
            )
        if probabilities is not None:
            probabilities = [float(p) for p in probabilities]
            if any(not math.isfinite(p) or p < 0 for p in probabilities):
                raise ValueError(
                    "RandomScheduler: probabilities must be finite and "
                    f"non-negative. Received: probabilities={probabilities}"
                )
        self.num_random = int(num_random)
        self.probabilities = probabilities
        self.include_min = bool(include_min)
        self.include_max = bool(include_max)

    def _fixed(self, rates):
        fixed = []
        if self.include_max:
            fixed.append(0)
        if self.include_min and len(rates) - 1 not in fixed:
            fixed.append(len(rates) - 1)
        return fixed

    def _weights(self, rates):
        weights = self.probabilities or [1.0] * len(rates)
        weights = np.array(weights, "float64")
        weights[self._fixed(rates)] = 0.0
        return weights

    def _drawn(self, rates):
        """How many rates are drawn: `num_random`, or all that are left."""
        return min(self.num_random, int(np.count_nonzero(self._weights(rates))))

    def validate(self, rates):
        if self.probabilities is not None and len(self.probabilities) != len(rates):
            raise ValueError(
                "RandomScheduler: probabilities needs one entry per rate "
                f"({len(rates)} rates). Received: probabilities="
                f"{self.probabilities}"
            )
        if not self.num_rates(rates):
            raise ValueError(
                "RandomScheduler: no rate can be drawn: every rate of "
                f"rates={list(rates)} has probability 0. Received: "
                f"probabilities={self.probabilities}"
            )

    def num_rates(self, rates):
        return len(self._fixed(rates)) + self._drawn(rates)

    def sample(self, rates, seed):
        fixed = ops.convert_to_tensor(np.array(self._fixed(rates), "int32"))
        drawn = self._drawn(rates)
        if not drawn:
            return fixed
        with np.errstate(divide="ignore"):
            log_weights = np.log(self._weights(rates)).astype("float32")
        # Gumbel top-k: the k largest of log p + Gumbel noise are a draw of k
        # distinct items with probability proportional to p.
        uniform = keras.random.uniform(
            (len(rates),), minval=1e-7, maxval=1.0, seed=seed
        )
        scores = ops.convert_to_tensor(log_weights) - ops.log(-ops.log(uniform))
        _, indices = ops.top_k(scores, drawn)
        return ops.concatenate([fixed, ops.cast(indices, "int32")], axis=0)

    def get_config(self):
        return {
            "num_random": self.num_random,
            "probabilities": self.probabilities,
            "include_min": self.include_min,
            "include_max": self.include_max,
        }


@keras.saving.register_keras_serializable(package="keras_slicing")
class AllScheduler(RateScheduler):
    """Runs every rate in every step (the paper's `"all"` schedule).

    Example:

    >>> AllScheduler().sample((1.0, 0.5), keras.random.SeedGenerator(0))
    # [0, 1]
    """

    def num_rates(self, rates):
        return len(rates)

    def sample(self, rates, seed):
        del seed
        return ops.arange(len(rates), dtype="int32")


def get(identifier, num_random=None, probabilities=None):
    """A scheduler from a name of `SCHEDULER_NAMES` or a `RateScheduler`.

    `num_random` (default 1) and `probabilities` configure the named random
    schedules; `"all"` checks and ignores them (it runs every rate, so the
    same arguments work with every name). Pass them inside the object when
    giving an object.
    """
    if isinstance(identifier, RateScheduler):
        if num_random is not None or probabilities is not None:
            raise ValueError(
                "num_random and rate_probabilities configure a scheduler "
                "given by name; set them on the scheduler object instead. "
                f"Received: scheduler={type(identifier).__name__}, "
                f"num_random={num_random!r}, rate_probabilities={probabilities!r}"
            )
        return identifier
    if isinstance(identifier, dict):
        return keras.saving.deserialize_keras_object(identifier)
    if identifier not in SCHEDULER_NAMES:
        raise ValueError(
            f"Unknown rate scheduler. Expected one of {list(SCHEDULER_NAMES)} "
            f"or a RateScheduler. Received: scheduler={identifier!r}"
        )
    random = RandomScheduler(
        num_random=1 if num_random is None else num_random,
        probabilities=probabilities,
        include_min=identifier in ("random_min", "random_min_max", "all"),
        include_max=identifier in ("random_max", "random_min_max", "all"),
    )
    return AllScheduler() if identifier == "all" else random
