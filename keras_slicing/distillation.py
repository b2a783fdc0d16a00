"""Distillation of `SlicingModel`: its settings and soft targets.

In place, the widest rate of a training step teaches the narrower ones
(Universally Slimmable Networks): each narrower rate's loss mixes its label
loss with the cross-entropy between the widest rate's detached predictions
and its own. With a teacher (a frozen `keras.Model`, typically the model a
`SlicingModel` was converted from), every rate learns from the teacher's
predictions instead. `SlicingModel` documents the arguments; this module
checks them and computes the soft-target term and its weight at a given
optimizer step.
"""

import keras
import numpy as np
from keras import ops

MODES = (None, "inplace")  # or a keras.Model: the teacher


class Distillation:
    """Checked distillation settings of a model named by `owner`.

    Raises a `ValueError` naming the argument and the allowed values for
    any setting out of range, whether or not distillation is on.
    """

    def __init__(
        self, owner, student, mode, weight, from_logits, temperature, warmup
    ):
        self.teacher = None
        if isinstance(mode, keras.Model):
            self.teacher = _checked_teacher(owner, student, mode)
            mode = "teacher"
        elif isinstance(mode, keras.layers.Layer) or mode not in MODES:
            raise ValueError(
                f"{owner}: distillation must be None, 'inplace' or a "
                "keras.Model (the teacher). Received: "
                f"distillation={mode!r}"
            )
        num_outputs = len(student.outputs)
        if mode and num_outputs != 1:
            raise ValueError(
                f"{owner}: distillation={mode!r} needs a single output. "
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

    @property
    def inplace(self):
        return self.mode == "inplace"

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


def _checked_teacher(owner, student, teacher):
    """`teacher`, checked to be a frozen stand-in for `student`'s output."""
    shared = {id(v) for v in teacher.weights} & {id(v) for v in student.weights}
    if shared:
        raise ValueError(
            f"{owner}: the teacher '{teacher.name}' shares {len(shared)} "
            "variable(s) with the model, so training would move the teacher "
            "too. Pass a separate copy: teacher = keras.models.clone_model("
            "model); teacher.set_weights(model.get_weights())."
        )
    outputs = getattr(teacher, "outputs", None)
    if outputs is not None and len(outputs) != 1:
        raise ValueError(
            f"{owner}: the teacher '{teacher.name}' must have a single "
            f"output. Received: {len(outputs)} outputs"
        )
    mine = tuple(student.outputs[0].shape)[1:]
    theirs = tuple(outputs[0].shape)[1:] if outputs else None
    if theirs is not None and theirs != mine:
        raise ValueError(
            f"{owner}: the teacher '{teacher.name}' predicts shape {theirs} "
            f"per example but the model predicts {mine}: a teacher must "
            "predict what the model predicts (same classes, both logits or "
            "both probabilities)."
        )
    return teacher
