"""Model slicing on scikit-learn's handwritten digits: one model, every width.

Trains a sliced CNN on the 8x8 digits that ship with scikit-learn (real data,
no download), sampling one slice rate per batch, then prints test accuracy,
parameters and MACs at every width.

    python examples/digits.py [--epochs 20] [--output_dir results]
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import keras_slicing  # noqa: E402
from keras_slicing import layers  # noqa: E402
from keras_slicing.rates import DEFAULT_RATES  # noqa: E402

flags.DEFINE_integer("epochs", 20, "Training epochs.")
flags.DEFINE_integer("seed", 0, "Random seed (split, weights, rates).")
flags.DEFINE_string("output_dir", "results", "Where the trained model goes.")
FLAGS = flags.FLAGS


def digits_split(seed):
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    return train_test_split(
        x, digits.target, test_size=0.25, stratify=digits.target, random_state=seed
    )


def build_model():
    x = keras.Input((8, 8, 1), name="image")
    rate = keras_slicing.rate_input()
    h = layers.SlicedConv2D(32, 3, padding="same", slice_input=False)(x, rate)
    h = layers.SlicedGroupNormalization(groups=8)(h, rate)
    h = keras.layers.ReLU()(h)
    h = layers.SlicedConv2D(64, 3, strides=2, padding="same")(h, rate)
    h = layers.SlicedGroupNormalization(groups=8)(h, rate)
    h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    y = layers.SlicedDense(10, slice_output=False, name="logits")(h, rate)
    return keras.Model([x, rate], y, name="digits_cnn")


def random_rate_batches(x, y, batch_size, seed):
    """Batches whose rate input holds one rate drawn from DEFAULT_RATES."""
    choices = tf.constant(DEFAULT_RATES, tf.float32)

    def add_rate(images, labels):
        index = tf.random.uniform((), 0, len(DEFAULT_RATES), tf.int32)
        rate = tf.fill(tf.shape(labels), choices[index])
        return (images, rate), labels

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed)
    return dataset.batch(batch_size).map(add_rate)


def main(_):
    keras.utils.set_random_seed(FLAGS.seed)
    x_train, x_test, y_train, y_test = digits_split(FLAGS.seed)
    model = build_model()
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(
        random_rate_batches(x_train, y_train, 64, FLAGS.seed),
        epochs=FLAGS.epochs,
        verbose=2,
    )
    print(f"\n{'rate':>6} {'params':>8} {'MACs':>9} {'accuracy':>9}")
    for rate in DEFAULT_RATES:
        cost = keras_slicing.model_cost(model, rate)
        logits = model.predict([x_test, np.full(len(x_test), rate)], verbose=0)
        accuracy = float(np.mean(logits.argmax(-1) == y_test))
        print(f"{rate:>6g} {cost['params']:>8} {cost['macs']:>9} {accuracy:>9.3f}")
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    path = os.path.join(FLAGS.output_dir, "digits_cnn.keras")
    model.save(path)
    print(f"\nsaved {path}")


if __name__ == "__main__":
    app.run(main)
