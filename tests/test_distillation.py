"""A frozen teacher model (`SlicingModel(distillation=teacher)`)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_slicing import SlicingModel
from tests.sliced_models import randomize_weights
from tests.sliced_models import small_mlp

RATES = (1.0, 0.75, 0.5, 0.25)
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _teacher(seed=1):
    x = keras.Input((64,))
    h = keras.layers.Dense(32, activation="relu")(x)
    h = keras.layers.Dropout(0.5)(h)  # off in inference mode
    teacher = keras.Model(x, keras.layers.Dense(10)(h), name="teacher")
    randomize_weights(teacher, seed=seed)
    return teacher


def _student(teacher, **kwargs):
    base = small_mlp()
    model = SlicingModel(
        base.inputs, base.outputs, rates=RATES, scheduler="all",
        distillation=teacher, **kwargs,
    )
    randomize_weights(model, seed=3)
    return model


def test_every_rate_learns_from_the_teacher_in_one_update():
    alpha, t = 0.6, 2.5
    teacher = _teacher()
    model = _student(teacher, distillation_weight=alpha, distillation_temperature=t)
    x = np.random.default_rng(0).normal(size=(16, 64)).astype("float32")
    y = np.arange(16) % 10
    lr = 0.05
    model.compile(keras.optimizers.SGD(lr), LOSS)

    # Even weights under distillation; every rate, the widest included,
    # mixes its label loss with the teacher's soft targets.
    target = tf.nn.softmax(teacher(x, training=False) / t)
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        total = 0.0
        for rate in RATES:
            logits = model([x, np.full(16, rate, "float32")])
            hard = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)
            )
            soft = t * t * tf.reduce_mean(
                tf.nn.softmax_cross_entropy_with_logits(target, logits / t)
            )
            total += (1 - alpha) * hard + alpha * soft
    gradients = tape.gradient(total, variables)
    expected = [v.numpy() - lr * g.numpy() for v, g in zip(variables, gradients)]
    before = [w.copy() for w in teacher.get_weights()]

    model.train_on_batch(x, y)
    for variable, want in zip(model.trainable_variables, expected):
        np.testing.assert_allclose(variable.numpy(), want, rtol=1e-4, atol=1e-5)
    for old, new in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_teacher_is_neither_a_weight_nor_saved(tmp_path):
    teacher = _teacher()
    model = _student(teacher)
    assert model.distillation is teacher
    assert len(model.weights) == len(small_mlp().weights)
    model.save(tmp_path / "student.keras")
    loaded = keras.saving.load_model(tmp_path / "student.keras")
    assert loaded.distillation is None
    assert loaded.get_config()["distillation"] is None
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_teacher_sharing_the_weights_is_refused():
    base = small_mlp()
    model = SlicingModel(base.inputs, base.outputs, rates=RATES)
    with pytest.raises(ValueError, match=r"shares 6 variable\(s\).*clone_model"):
        SlicingModel(base.inputs, base.outputs, distillation=model.at_rate(1.0))


def test_teacher_predicting_another_shape_is_refused():
    x = keras.Input((64,))
    teacher = keras.Model(x, keras.layers.Dense(3)(x), name="three_classes")
    base = small_mlp()
    with pytest.raises(ValueError, match=r"predicts shape \(3,\).*\(10,\)"):
        SlicingModel(base.inputs, base.outputs, distillation=teacher)


def test_a_layer_is_no_teacher():
    base = small_mlp()
    with pytest.raises(ValueError, match="distillation must be None, 'inplace' or a keras.Model"):
        SlicingModel(base.inputs, base.outputs, distillation=keras.layers.Dense(10))
