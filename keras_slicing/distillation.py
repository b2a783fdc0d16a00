"""In-place distillation of `SlicingModel`: its settings and soft targets.

The widest rate of a training step teaches the narrower ones (Universally
Slimmable Networks): each narrower rate's loss mixes its label loss with the
cross-entropy between the widest rate's detached predictions and its own.
`SlicingModel` documents the arguments; this module checks them and computes
the soft-target term and its weight at a given optimizer step.
"""

import keras
import numpy as np
from keras import ops

MODES = (None, "inplace")


class Distillation:
    """Checked distillation settings of a model named by `owner`.

    Raises a `ValueError` naming the argument and the allowed values for
    any setting out of range, whether or not distillation is on.
    """

    def __init__(
        self, owner, num_outputs, mode, weight, from_logits, temperature, warmup
    ):
        if mode not in MODES:
            raise ValueError(
                f"{owner}: distillation must be one of {list(MODES)}. "
                f"Received: distillation={mode!r}"
            )
        if mode and num_outputs != 1:
            raise ValueError(
                f"{owner}: distillation='inplace' needs a single output. "
                f"Received: {num_outputs} outputs"
            )
        if not 0.0 <= float(weight) <= 1.0:
            raise ValueError(
                f"{owner}: distillation_weight must be in [0, 1]. "
                f"Received: distillation_weight={weight!r}"
            )
        try:
            value = float(temperature)
        except (TypeError, ValueError):
            value = float("nan")
        if not (np.isfinite(value) and value > 0):
            raise ValueError(
                f"{owner}: distillation_temperature must be a positive number. "
                f"Received: distillation_temperature={temperature!r}"
            )
        if value != 1.0 and not from_logits:
            raise ValueError(
                f"{owner}: distillation_temperature needs logits "
                "(distillation_from_logits=True). Received: "
                f"distillation_temperature={temperature!r}"
            )
        if (
            isinstance(warmup, bool)
            or not isinstance(warmup, (int, np.integer))
            or warmup < 0
        ):
            raise ValueError(
                f"{owner}: distillation_warmup must be a non-negative integer "
                f"(optimizer steps). Received: distillation_warmup={warmup!r}"
            )
        self.mode = mode
        self.weight = float(weight)
        self.from_logits = bool(from_logits)
        self.temperature = value
        self.warmup = int(warmup)
        self._cross_entropy = keras.losses.CategoricalCrossentropy(
            from_logits=self.from_logits
        )

    def weight_at(self, iterations):
        """The soft targets' weight after `iterations` optimizer steps."""
        if not self.warmup:
            return self.weight
        done = ops.cast(iterations, "float32")
        return self.weight * ops.minimum(done / float(self.warmup), 1.0)

    def soft_target_loss(self, teacher, y_pred, sample_weight):
        """Cross-entropy of `y_pred` against the (detached) `teacher`.

        With logits and temperature `T`, `softmax(teacher / T)` against
        `y_pred / T`, times `T**2` so that the gradient keeps its scale
        (Hinton et al.).
        """
        teacher = ops.cast(teacher, "float32")
        if not self.from_logits:
            return self._cross_entropy(teacher, y_pred, sample_weight)
        t = self.temperature
        target = ops.softmax(teacher / t)
        soft = self._cross_entropy(
            target, ops.cast(y_pred, "float32") / t, sample_weight
        )
        return soft * (t * t)
