"""The cascade: each example answered by the narrowest width that is sure.

The implementation of `Bundle.predict_cascade` and its `CascadeResult`.
"""

import numbers
import warnings

import numpy as np

from keras_slicing_lite import outputs as outputs_lib


def predict_cascade(bundle, x, threshold, rates, from_logits):
    """See `Bundle.predict_cascade`."""
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, numbers.Real)
        or not 0.0 <= threshold <= 1.0
    ):
        raise ValueError(
            "predict_cascade: threshold must be a number in [0, 1] (a "
            "confidence). Received: "
            f"threshold={threshold!r}"
        )
    kind = _kind(bundle.output_kind, from_logits)
    order = sorted(bundle.resolve_rates(rates, "predict_cascade"))
    batch = bundle.prepare(x, "predict_cascade")
    n = batch.shape[0]
    outputs = np.zeros((n, *(d or 0 for d in bundle.output_shape[1:])), np.float32)
    answered_by = np.full(n, np.nan)
    spent = np.zeros(n)
    macs = {r: bundle.rate_entry(r).get("macs") for r in order}
    count_macs = all(m is not None for m in macs.values())
    pending = np.arange(n)
    for position, rate in enumerate(order):
        if pending.size == 0:
            break
        out = bundle.predict(batch[pending], rate)
        if count_macs:
            spent[pending] += macs[rate]
        if position == len(order) - 1:
            accept = np.ones(pending.size, bool)
        else:
            accept = outputs_lib.confidence(kind, out) >= threshold
        outputs[pending[accept]] = out[accept]
        answered_by[pending[accept]] = rate
        pending = pending[~accept]
    mean_macs = float(spent.mean()) if count_macs and n else None
    widest = macs[order[-1]] if count_macs else None
    fraction = mean_macs / widest if mean_macs is not None and widest else None
    if fraction is not None and fraction > 1.0:
        # The point of the cascade is to cost less than the widest width;
        # past it, answering every example there is cheaper and as accurate.
        warnings.warn(
            f"predict_cascade: at threshold={threshold} the cascade cost "
            f"{fraction:.2f}x the MACs of running rate {order[-1]:g} alone "
            "(too few examples were confident enough at the narrow widths). "
            "Lower the threshold, pass fewer rates, or call "
            f"predict(x, rate={order[-1]:g}).",
            CascadeCostWarning,
            stacklevel=3,
        )
    return CascadeResult(
        outputs=outputs,
        rates=answered_by,
        mean_macs=mean_macs,
        macs_fraction=fraction,
        output_kind=kind,
    )


class CascadeCostWarning(UserWarning):
    """A cascade that cost more than its widest width run alone."""


class CascadeResult:
    """The answer of `Bundle.predict_cascade`.

    Attributes:
        outputs: float32 outputs of the width that answered each example.
        predictions: The answer of each example for the bundle's output
            kind: the arg-max class (multiclass), 0/1 (binary) or 0/1 per
            label (multi-label).
        rates: The rate that answered each example.
        mean_macs: Average MACs per example over all widths it ran at, or
            `None` when the manifest has no MACs.
        macs_fraction: `mean_macs` relative to the widest rate used.
        output_kind: The output kind the predictions were read with.
    """

    def __init__(self, outputs, rates, mean_macs, macs_fraction, output_kind="multiclass"):
        self.outputs = outputs
        self.output_kind = output_kind
        self.predictions = outputs_lib.predictions(output_kind, outputs)
        self.rates = rates
        self.mean_macs = mean_macs
        self.macs_fraction = macs_fraction

    def accuracy(self, labels):
        """Accuracy against `labels`: class indices or one-hot (multiclass),
        0/1 (binary), 0/1 per label (multi-label, mean over labels)."""
        labels = outputs_lib.targets(
            self.output_kind, labels, (None, *self.outputs.shape[1:]),
            "CascadeResult.accuracy",
        )
        if len(labels) != len(self.predictions):
            raise ValueError(
                f"CascadeResult.accuracy: expected {len(self.predictions)} "
                f"labels. Received: {len(labels)}"
            )
        return outputs_lib.score(self.output_kind, self.outputs, labels)

    def __repr__(self):
        return (
            f"CascadeResult(n={self.predictions.shape[0]}, "
            f"mean_macs={self.mean_macs}, macs_fraction={self.macs_fraction})"
        )


def _kind(kind, from_logits):
    if not outputs_lib.is_classifier(kind):
        raise ValueError(
            "predict_cascade: the bundle's output_kind is 'regression', which "
            "has no confidence to stop early on; the cascade needs a "
            "classifier."
        )
    if from_logits is None:
        return kind
    if from_logits not in (True, False):
        raise ValueError(
            "predict_cascade: from_logits must be True, False or None. "
            f"Received: from_logits={from_logits!r}"
        )
    family = kind.split("_")[0]
    suffix = {
        "multiclass": ("logits", "probabilities"),
        "binary": ("logit", "probability"),
        "multilabel": ("logits", "probabilities"),
    }[family]
    return f"{family}_{suffix[0] if from_logits else suffix[1]}"
