"""The paper's CIFAR-10 setting: a sliced pre-activation ResNet.

Pre-activation ResNet (depth 6n+2) with group normalization (8 groups aligned
with the 8 slice groups), rates 1, 0.75, 0.5, 0.25 sampled with
`random_min_max`, SGD with Nesterov momentum 0.9, learning rate 0.1 divided by
10 at 50% and 75% of the epochs, weight decay 1e-4, random crops of the
4-pixel-padded image and horizontal flips, as in the paper's code.

CIFAR-10 is read from a local directory holding the standard python pickle
batches (`data_batch_1` ... `data_batch_5`, `test_batch`); nothing is
downloaded. Runs on a GPU when TensorFlow sees one.

    python examples/cifar10_resnet.py --data_dir=/path/to/cifar-10-batches-py \
        [--depth=20] [--epochs=160] [--mixed_precision]
"""

import os
import pathlib
import pickle

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import keras_slicing  # noqa: E402
from keras_slicing import layers  # noqa: E402
from keras_slicing.rates import DEFAULT_RATES  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    # Defined only when run as a script, so importing this module (tests,
    # notebooks) never clashes with flags of the same name elsewhere.
    flags.DEFINE_string("data_dir", None, "Directory of the CIFAR-10 python batches.")
    flags.DEFINE_integer("depth", 20, "ResNet depth, 6n+2 (20, 32, 56, 110).")
    flags.DEFINE_integer("base_width", 16, "Channels of the first stage.")
    flags.DEFINE_integer("epochs", 160, "Training epochs.")
    flags.DEFINE_integer("batch_size", 128, "Batch size.")
    flags.DEFINE_float("learning_rate", 0.1, "Initial learning rate.")
    flags.DEFINE_float("weight_decay", 1e-4, "L2 weight decay (as in SGD).")
    flags.DEFINE_integer("steps_per_epoch", None, "Limit steps per epoch (smoke runs).")
    flags.DEFINE_bool("mixed_precision", False, "Use the mixed_float16 policy (GPU).")
    flags.DEFINE_string("output_dir", "results/cifar10", "Where the model is saved.")
    flags.DEFINE_integer("seed", 0, "Random seed.")


MEAN = np.array([0.4914, 0.4822, 0.4465], "float32")
STD = np.array([0.2470, 0.2435, 0.2616], "float32")


def load_cifar10(data_dir):
    """`(x_train, y_train, x_test, y_test)` from the python pickle batches."""
    data_dir = pathlib.Path(data_dir)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not (data_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"--data_dir={data_dir} lacks the CIFAR-10 python batches {missing}; "
            "expected the 'cifar-10-batches-py' directory of the python version."
        )

    def read(name):
        with open(data_dir / name, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        images = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32)
        return images.transpose(0, 2, 3, 1), np.asarray(batch[b"labels"], np.int64)

    train = [read(n) for n in names[:5]]
    x_test, y_test = read("test_batch")
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return x_train, y_train, x_test, y_test


def normalize(images):
    return (tf.cast(images, tf.float32) / 255.0 - MEAN) / STD


def augment(image):
    """Random crop of the 4-pixel zero-padded image, random horizontal flip."""
    padded = tf.pad(image, [[4, 4], [4, 4], [0, 0]])
    image = tf.image.random_crop(padded, tf.shape(image))
    return tf.image.random_flip_left_right(image)


def datasets(x_train, y_train, x_test, y_test, batch_size, seed):
    train = (
        tf.data.Dataset.from_tensor_slices((x_train, y_train))
        .shuffle(len(x_train), seed=seed)
        .map(lambda x, y: (augment(normalize(x)), y), tf.data.AUTOTUNE)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    test = (
        tf.data.Dataset.from_tensor_slices((x_test, y_test))
        .map(lambda x, y: (normalize(x), y))
        .batch(512)
    )
    return train, test


def preact_resnet(depth=20, base_width=16, classes=10, weight_decay=1e-4, seed=None):
    """A sliced pre-activation ResNet for 32x32 images."""
    if (depth - 2) % 6:
        raise ValueError(f"depth must be 6n+2 (20, 32, 56, ...). Received: depth={depth}")
    blocks = (depth - 2) // 6
    # SGD's weight decay adds wd * w to the gradient: an L2 penalty of wd / 2.
    l2 = keras.regularizers.L2(weight_decay / 2)

    def conv(filters, size, stride=1, **kwargs):
        return layers.SlicedConv2D(
            filters, size, strides=stride, padding="same", use_bias=False,
            kernel_initializer="he_normal", kernel_regularizer=l2, **kwargs,
        )

    def norm_relu(h, rate):
        h = layers.SlicedGroupNormalization(groups=8)(h, rate)
        return keras.layers.ReLU()(h)

    image = keras.Input((32, 32, 3), name="image")
    rate = keras_slicing.rate_input()
    h = conv(base_width, 3, slice_input=False)(image, rate)
    width = base_width
    for stage in range(3):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            filters = base_width * 2**stage
            pre = norm_relu(h, rate)
            shortcut = h
            if stride != 1 or filters != width:
                shortcut = conv(filters, 1, stride)(pre, rate)
            h = conv(filters, 3, stride)(pre, rate)
            h = norm_relu(h, rate)
            h = conv(filters, 3)(h, rate)
            h = keras.layers.Add()([h, shortcut])
            width = filters
    h = norm_relu(h, rate)
    h = keras.layers.GlobalAveragePooling2D()(h)
    logits = layers.SlicedDense(
        classes, slice_output=False, kernel_regularizer=l2, name="logits"
    )(h, rate)
    if keras.mixed_precision.global_policy().compute_dtype == "float16":
        logits = keras.layers.Activation("linear", dtype="float32")(logits)
    return keras_slicing.SlicingModel(
        inputs=[image, rate],
        outputs=logits,
        rates=DEFAULT_RATES,
        scheduler="random_min_max",
        num_random=1,
        rate_loss_weights=[1.0] * len(DEFAULT_RATES),  # the paper's even sum
        seed=seed,
        name=f"preact_resnet{depth}",
    )


def train(data_dir, depth=20, base_width=16, epochs=160, batch_size=128,
          learning_rate=0.1, weight_decay=1e-4, steps_per_epoch=None,
          output_dir=None, seed=0, verbose=2):
    """Trains the paper's setting; returns `{rate: test accuracy}`."""
    keras.utils.set_random_seed(seed)
    x_train, y_train, x_test, y_test = load_cifar10(data_dir)
    train_data, test_data = datasets(x_train, y_train, x_test, y_test, batch_size, seed)
    model = preact_resnet(depth, base_width, weight_decay=weight_decay, seed=seed)
    steps = steps_per_epoch or -(-len(x_train) // batch_size)
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(
        [int(steps * epochs * 0.5), int(steps * epochs * 0.75)],
        [learning_rate, learning_rate / 10, learning_rate / 100],
    )
    model.compile(
        keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    if steps_per_epoch:
        train_data = train_data.repeat()
    model.fit(train_data, epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=verbose)
    results = model.evaluate_rates(test_data)
    accuracy = {rate: metrics["accuracy"] for rate, metrics in results.items()}
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        model.save(os.path.join(output_dir, f"{model.name}.keras"))
    return accuracy


def main(_):
    if not FLAGS.data_dir:
        raise app.UsageError("--data_dir is required (the CIFAR-10 python batches).")
    if FLAGS.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    print("GPUs:", tf.config.list_physical_devices("GPU") or "none (CPU)")
    accuracy = train(
        FLAGS.data_dir, FLAGS.depth, FLAGS.base_width, FLAGS.epochs,
        FLAGS.batch_size, FLAGS.learning_rate, FLAGS.weight_decay,
        FLAGS.steps_per_epoch, FLAGS.output_dir, FLAGS.seed,
    )
    print(f"\n{'rate':>6} {'test accuracy':>14}")
    for rate, value in accuracy.items():
        print(f"{rate:>6g} {value:>14.4f}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
