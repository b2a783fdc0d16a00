"""What an exported model's output means, and how a file is scored by it.

`export_tflite` writes the output's kind into the manifest (given, or
inferred here from the last layer's activation and units and the compiled
loss) and scores each written file with the kind's metric. The kinds, their
metrics and scoring are the edge package's (`keras_slicing_lite.outputs`), so
host and edge agree; this module holds the host's side, which reads a Keras
model, apart from `export.py`, which converts and writes the files.
"""

import keras
import numpy as np
from keras_slicing_lite import outputs as outputs_lib

from keras_slicing import keras_internals
from keras_slicing.interpreter import run_tflite


_CATEGORICAL_LOSSES = ("sparse_categorical_crossentropy", "categorical_crossentropy",
                       "categorical_focal_crossentropy", "categorical_hinge")
_BINARY_LOSSES = ("binary_crossentropy", "binary_focal_crossentropy", "hinge",
                  "squared_hinge")
_REGRESSION_LOSSES = ("mean_squared_error", "mean_absolute_error", "huber",
                      "log_cosh", "mean_squared_logarithmic_error",
                      "mean_absolute_percentage_error", "mse", "mae", "msle",
                      "mape", "logcosh", "huber_loss")


def infer(model, output, output_kind):
    """The kind of the model's output: given, or inferred (see export_tflite)."""
    if output_kind is not None:
        if output_kind not in outputs_lib.MANIFEST_KINDS:
            raise ValueError(
                "export_tflite: output_kind must be one of "
                f"{', '.join(outputs_lib.MANIFEST_KINDS)}. Received: "
                f"output_kind={output_kind!r}"
            )
        return output_kind
    units = output.shape[-1] if len(output.shape) > 1 else None
    activation = _final_activation(output)
    loss = _loss_family(model)
    if activation == "softmax" and loss in (None, "categorical"):
        return "multiclass_probabilities"
    if activation == "sigmoid" and loss in (None, "binary"):
        return "binary_probability" if units == 1 else "multilabel_probabilities"
    if activation == "linear":
        if loss == "categorical" and units != 1:
            return "multiclass_logits"
        if loss == "binary":
            return "binary_logit" if units == 1 else "multilabel_logits"
        if loss == "regression":
            return "regression"
        if loss is None and units is not None and units > 1:
            # A bundle's long-standing meaning (format v1): class logits.
            return "multiclass_logits"
    elif activation not in ("softmax", "sigmoid") and loss in (None, "regression"):
        return "regression"
    raise ValueError(
        f"export_tflite: cannot tell what the output of model '{model.name}' "
        f"means: a {activation} output of {units} unit(s) with "
        f"{'no compiled loss' if loss is None else f'a {loss} loss'}. "
        "Pass output_kind, one of "
        f"{', '.join(outputs_lib.MANIFEST_KINDS)} (a linear single unit is "
        "'binary_logit' or 'regression')."
    )


def _final_activation(output):
    """`"softmax"`, `"sigmoid"`, `"linear"` or another name: the last layer's."""
    layer = keras_internals.producer(output)
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    activation = getattr(layer, "activation", None)
    if activation is None:
        return "linear"
    name = getattr(activation, "__name__", str(activation))
    return "linear" if name in ("linear", "identity") else name


def _loss_family(model):
    """`"categorical"`, `"binary"`, `"regression"` or `None` (not compiled)."""
    loss = getattr(model, "loss", None)
    if loss is None or isinstance(loss, (list, tuple, dict)):
        return None
    if isinstance(loss, str):
        name = loss
    else:
        name = getattr(loss, "name", None) or getattr(loss, "__name__", "")
    name = name.lower()
    for family, names in (
        ("categorical", _CATEGORICAL_LOSSES),
        ("binary", _BINARY_LOSSES),
        ("regression", _REGRESSION_LOSSES),
    ):
        if name in names:
            return family
    return None


def score(interpreter, kind, x, y, batch_size=256):
    """The metric of `kind` of a loaded `.tflite` file on inputs `x`, targets `y`."""
    outputs = np.concatenate(
        [
            run_tflite(interpreter, x[start : start + batch_size])
            for start in range(0, len(x), batch_size)
        ]
    )
    return outputs_lib.score(kind, outputs, y)
