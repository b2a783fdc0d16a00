"""What a model's output means: its kind, predictions, confidence and metric.

The one place, shared by the host's export and the edge runtime, that turns
raw outputs into answers. A bundle's manifest names the kind (format v2);
a v1 manifest means `"multiclass"` (logits or probabilities, told apart per
call).

Kinds and their metric (the value stored per rate in the manifest):

| kind                       | output               | prediction          | metric              |
|----------------------------|----------------------|---------------------|---------------------|
| `multiclass_logits`        | `(batch, C)`, C >= 2 | arg-max class       | `accuracy`          |
| `multiclass_probabilities` | softmax, C >= 2      | arg-max class       | `accuracy`          |
| `multiclass` (v1)          | either of the above  | arg-max class       | `accuracy`          |
| `binary_logit`             | `(batch, 1)`         | 1 if logit >= 0     | `binary_accuracy`   |
| `binary_probability`       | sigmoid, `(batch, 1)`| 1 if p >= 0.5       | `binary_accuracy`   |
| `multilabel_logits`        | `(batch, L)`         | 0/1 per label       | `binary_accuracy`   |
| `multilabel_probabilities` | sigmoid, `(batch, L)`| 0/1 per label       | `binary_accuracy`   |
| `regression`               | any                  | the output itself   | `mean_absolute_error` |

`binary_accuracy` of a multi-label output is the mean over every label of
every example (Keras' `binary_accuracy`), not the stricter subset accuracy.
The confidence the cascade compares with its threshold is the largest class
probability (multiclass), `max(p, 1 - p)` (binary), or that of the least
sure label (multi-label); a regression output has none.
"""

import numpy as np

MULTICLASS_KINDS = ("multiclass_logits", "multiclass_probabilities", "multiclass")
BINARY_KINDS = ("binary_logit", "binary_probability")
MULTILABEL_KINDS = ("multilabel_logits", "multilabel_probabilities")
KINDS = MULTICLASS_KINDS + BINARY_KINDS + MULTILABEL_KINDS + ("regression",)
METRICS = ("accuracy", "binary_accuracy", "mean_absolute_error")
# Kinds a manifest v2 may name; "multiclass" is only v1's implicit meaning.
MANIFEST_KINDS = tuple(k for k in KINDS if k != "multiclass")


def check_kind(kind, owner):
    if kind not in KINDS:
        raise ValueError(
            f"{owner}: output_kind must be one of {', '.join(MANIFEST_KINDS)}. "
            f"Received: output_kind={kind!r}"
        )
    return kind


def metric_name(kind):
    """The metric a bundle of this output kind records per rate."""
    if kind in MULTICLASS_KINDS:
        return "accuracy"
    if kind == "regression":
        return "mean_absolute_error"
    return "binary_accuracy"


def is_classifier(kind):
    return kind != "regression"


def probabilities(kind, outputs):
    """Class (or label) probabilities of raw float outputs."""
    outputs = np.asarray(outputs, np.float32)
    if kind == "multiclass":
        sums = outputs.sum(axis=-1)
        is_probability = np.all(outputs >= 0) and np.allclose(sums, 1.0, atol=1e-3)
        kind = "multiclass_probabilities" if is_probability else "multiclass_logits"
    if kind == "multiclass_logits":
        shifted = outputs - outputs.max(axis=-1, keepdims=True)
        e = np.exp(shifted)
        return e / e.sum(axis=-1, keepdims=True)
    if kind in ("binary_logit", "multilabel_logits"):
        return _sigmoid(outputs)
    if kind == "regression":
        raise ValueError(
            "a regression output has no class probabilities; the cascade and "
            "the confidence need a classifier (output_kind other than "
            "'regression')."
        )
    return outputs


def predictions(kind, outputs):
    """Answers of raw outputs `(batch, ...)`: classes, 0/1 labels or values."""
    outputs = np.asarray(outputs, np.float32)
    if kind in MULTICLASS_KINDS:
        return outputs.argmax(axis=-1)
    if kind in BINARY_KINDS:
        return (_positive(kind, outputs)[..., 0]).astype(np.int64)
    if kind in MULTILABEL_KINDS:
        return _positive(kind, outputs).astype(np.int64)
    return outputs


def confidence(kind, outputs):
    """Per example, how sure the output is, in [0, 1] (see the module doc)."""
    p = probabilities(kind, outputs)
    if kind in MULTICLASS_KINDS:
        return p.max(axis=-1)
    sure = np.maximum(p, 1.0 - p)
    return sure.reshape(len(sure), -1).min(axis=-1)


def targets(kind, y, output_shape, owner):
    """Checks labels or targets against the kind; returns them normalized.

    Multiclass takes class indices `(N,)`, `(N, 1)` or one-hot `(N, C)`;
    binary takes 0/1 `(N,)` or `(N, 1)`; multi-label 0/1 `(N, L)`;
    regression values shaped like the output.
    """
    try:
        y = np.asarray(y)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{owner}: labels are not array-like: {error}") from None
    if y.dtype.kind not in "biuf" or y.ndim == 0:
        raise ValueError(
            f"{owner}: labels must be a numeric array with one row per "
            f"example. Received: dtype={y.dtype}, shape={y.shape}"
        )
    width = output_shape[-1] if len(output_shape) > 1 else None
    if kind == "regression":
        want = (len(y), *output_shape[1:])
        if y.size != int(np.prod(want)):
            raise ValueError(
                f"{owner}: regression targets must match the output shape "
                f"{_shape(output_shape)}. Received: y.shape={y.shape}"
            )
        return y.astype(np.float32).reshape(want)
    if kind in MULTICLASS_KINDS:
        if y.ndim > 1 and y.shape[-1] == 1:
            y = y[..., 0]
        elif y.ndim > 1:
            y = np.argmax(y, axis=-1)  # one-hot
        if not _integral(y):
            raise ValueError(
                f"{owner}: output_kind={kind!r} takes integer class labels "
                "or one-hot rows; the labels hold non-integer values. For "
                "real-valued targets export with output_kind='regression'."
            )
        if width is not None and y.size and (y.min() < 0 or y.max() >= width):
            raise ValueError(
                f"{owner}: class labels must lie in [0, {width - 1}] for an "
                f"output of {width} classes. Received: labels from "
                f"{y.min()} to {y.max()}"
            )
        return y.astype(np.int64)
    expected = (len(y),) if kind in BINARY_KINDS else (len(y), width)
    if kind in BINARY_KINDS and y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.shape != expected or not np.all((y == 0) | (y == 1)):
        raise ValueError(
            f"{owner}: output_kind={kind!r} takes 0/1 labels of shape "
            f"{'(N,)' if kind in BINARY_KINDS else f'(N, {width})'}. "
            f"Received: shape={y.shape}, values {np.unique(y)[:5].tolist()}..."
        )
    return y.astype(np.int64)


def score(kind, outputs, y):
    """The kind's metric (`metric_name(kind)`) of outputs against normalized labels."""
    if kind == "regression":
        return float(np.mean(np.abs(np.asarray(outputs, np.float32) - y)))
    return float(np.mean(predictions(kind, outputs) == y))


def to_json(prediction):
    """A prediction as plain JSON values (int, list of ints, floats)."""
    value = np.asarray(prediction)
    return value.tolist()


def _positive(kind, outputs):
    if kind.endswith("logit") or kind.endswith("logits"):
        return outputs >= 0.0
    return outputs >= 0.5


def _sigmoid(z):
    # tanh form: no overflow for large |z|.
    return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)


def _integral(y):
    return y.dtype.kind in "biu" or bool(np.all(np.isfinite(y)) and np.all(y == np.round(y)))


def _shape(shape):
    return "(" + ", ".join("batch" if d is None else str(d) for d in shape) + ")"
