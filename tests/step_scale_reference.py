"""A two-layer linear `SlicingModel` and its optimizer steps in numpy.

Shared by tests/test_step_scales.py (TensorFlow) and the backend checks: the
reference step is computed here from the model's weights by hand, never by
the code under test.
"""

import keras
import numpy as np

import keras_slicing

RATES = (1.0, 0.5)
UNITS = 4  # two slice groups of two units: width 0.5 uses units 0 and 1
SCALES = (0.25, 1.0)  # widths 1 and 0.5


def linear_model():
    """x (3) -> 4 units (sliced in 2 groups) -> 1 output, no activation."""
    x = keras.Input((3,))
    r = keras_slicing.rate_input()
    h = keras_slicing.layers.SlicedDense(UNITS, slice_input=False, slice_groups=2)(x, r)
    y = keras_slicing.layers.SlicedDense(1, slice_output=False, slice_groups=2)(h, r)
    model = keras_slicing.SlicingModel(
        [x, r], y, rates=RATES, scheduler="all", rate_loss_weights=(1.0, 1.0)
    )
    rng = np.random.default_rng(3)
    for variable in model.trainable_weights:
        variable.assign(rng.normal(0.0, 0.5, variable.shape).astype("float32"))
    return model


def batch():
    rng = np.random.default_rng(4)
    return (rng.normal(size=(8, 3)).astype("float32"),
            rng.normal(size=(8, 1)).astype("float32"))


def gradients(weights, x, t):
    """The gradient of the sum over both widths of the mean squared error."""
    kernel1, bias1, kernel2, bias2 = [np.asarray(w, "float64") for w in weights]
    grads = [np.zeros_like(kernel1), np.zeros_like(bias1),
             np.zeros_like(kernel2), np.zeros_like(bias2)]
    for rate in RATES:
        k = int(UNITS * rate)
        h = x @ kernel1[:, :k] + bias1[:k]
        y = h @ kernel2[:k] + bias2
        dy = 2.0 * (y - t) / len(x)
        grads[2][:k] += h.T @ dy
        grads[3] += dy.sum(0)
        dh = dy @ kernel2[:k].T
        grads[0][:, :k] += x.T @ dh
        grads[1][:k] += dh.sum(0)
    return grads


def element_scales():
    """Each weight's scale: width 0.5's for units 0 and 1 and the output
    bias (every width uses them), width 1's for units 2 and 3."""
    wide, narrow = SCALES
    unit = np.array([narrow, narrow, wide, wide])
    return [np.tile(unit, (3, 1)), unit, unit[:, None], np.array([narrow])]


def sgd_step(weights, x, t, learning_rate):
    return [w - learning_rate * s * g for w, s, g in
            zip(weights, element_scales(), gradients(weights, x, t))]


def first_adam_step(weights, x, t, learning_rate, epsilon=1e-7, beta_2=0.999):
    """Keras Adam's first step: lr * g / (|g| + epsilon / sqrt(1 - beta_2))
    (its bias corrections of m = (1 - beta_1) g and v = (1 - beta_2) g^2)."""
    epsilon = epsilon / np.sqrt(1.0 - beta_2)
    return [w - learning_rate * s * g / (np.abs(g) + epsilon) for w, s, g in
            zip(weights, element_scales(), gradients(weights, x, t))]


def trained_one_step(model, optimizer):
    """The weights before and after one scaled step of `model` on `batch()`."""
    model._set_rate_step_scales(SCALES)
    model.compile(optimizer, "mse")
    before = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    model.train_on_batch(*batch())
    after = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    return before, after
