"""One sliced model against individually trained plain models, per width.

Prints a table and writes benchmarks/results/accuracy_digits.json.

    python benchmarks/accuracy_digits.py [--epochs 25] [--seeds 3]

Data: scikit-learn's 8x8 digits (1,797 images), a fixed stratified 80/20
split. Network: conv32-GN-conv64-GN-GAP-dense. The sliced model (rates
1, 0.75, 0.5, 0.25; `random_min_max`, one random rate) is trained once per
seed, without and with in-place distillation; a plain Keras model of each
width (the same network with `r` times the channels and group count) is
trained separately with the same epochs, optimizer and batch size. The
paper's claim: the sliced model matches the individually trained ones at
every width. Reported: test accuracy, mean +- sample std over the seeds.
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from benchmarks import common  # noqa: E402
from keras_slicing import SlicingModel  # noqa: E402
from keras_slicing import layers  # noqa: E402
from keras_slicing import rate_input  # noqa: E402

flags.DEFINE_integer("epochs", 25, "Training epochs of every model.")
flags.DEFINE_integer("seeds", 3, "Seeds (weight init, shuffling, rate sampling).")
flags.DEFINE_integer("batch", 64, "Batch size.")
flags.DEFINE_float("learning_rate", 3e-3, "Adam learning rate.")
flags.DEFINE_float(
    "distillation_weight", 1.0,
    "Weight of the soft-target loss of the narrower rates (1.0: US-Nets).",
)
flags.DEFINE_string("output", None, "JSON path (default benchmarks/results/).")
FLAGS = flags.FLAGS

RATES = (1.0, 0.75, 0.5, 0.25)
WIDTHS = (32, 64)
GROUPS = 8
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def sliced_model(distillation, seed):
    x = keras.Input((8, 8, 1))
    rate = rate_input()
    h = x
    for i, width in enumerate(WIDTHS):
        h = layers.SlicedConv2D(width, 3, padding="same", slice_input=i > 0)(h, rate)
        h = layers.SlicedGroupNormalization(groups=GROUPS)(h, rate)
        h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    y = layers.SlicedDense(10, slice_output=False)(h, rate)
    return SlicingModel(
        [x, rate], y, rates=RATES, scheduler="random_min_max", num_random=1,
        distillation=distillation, distillation_weight=FLAGS.distillation_weight,
        seed=seed,
    )


def plain_model(rate):
    """The network at width `rate`: the slice groups it keeps, each of 1/G."""
    x = keras.Input((8, 8, 1))
    h = x
    kept = round(rate * GROUPS)
    for width in WIDTHS:
        h = keras.layers.Conv2D(width * kept // GROUPS, 3, padding="same")(h)
        h = keras.layers.GroupNormalization(groups=kept)(h)
        h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(x, keras.layers.Dense(10)(h))


def train(model, data):
    x_train, y_train, _, _ = data
    model.compile(
        keras.optimizers.Adam(FLAGS.learning_rate), LOSS, metrics=["accuracy"]
    )
    model.fit(x_train, y_train, batch_size=FLAGS.batch, epochs=FLAGS.epochs, verbose=0)


def summary(values):
    values = np.asarray(values)
    std = values.std(ddof=1) if len(values) > 1 else 0.0
    return float(values.mean()), float(std)


def main(_):
    facts = common.machine_facts()
    print("accuracy_digits benchmark:", facts)
    digits = load_digits()
    images = (digits.images / 16.0).astype("float32")[..., None]
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=0.2, stratify=digits.target, random_state=0
    )
    data = (x_train, y_train, x_test, y_test)
    kinds = ("plain", "sliced", "sliced_inplace")
    accuracy = {kind: {r: [] for r in RATES} for kind in kinds}
    started = time.perf_counter()
    for seed in range(FLAGS.seeds):
        for rate in RATES:
            keras.utils.set_random_seed(seed)
            model = plain_model(rate)
            train(model, data)
            result = model.evaluate(x_test, y_test, return_dict=True, verbose=0)
            accuracy["plain"][rate].append(result["accuracy"])
        for kind, distillation in (("sliced", None), ("sliced_inplace", "inplace")):
            keras.utils.set_random_seed(seed)
            model = sliced_model(distillation, seed)
            train(model, data)
            for rate, result in model.evaluate_rates(x_test, y_test).items():
                accuracy[kind][rate].append(result["accuracy"])
        print(f"seed {seed} done, {time.perf_counter() - started:.0f} s")

    stats = {kind: {r: summary(accuracy[kind][r]) for r in RATES} for kind in kinds}
    rows = []
    for rate in RATES:
        plain = stats["plain"][rate][0]
        row = [f"{rate:g}"]
        for kind in kinds:
            mean, std = stats[kind][rate]
            row.append(f"{100 * mean:.1f} +- {100 * std:.1f}")
        row.append(f"{100 * (stats['sliced'][rate][0] - plain):+.1f}")
        row.append(f"{100 * (stats['sliced_inplace'][rate][0] - plain):+.1f}")
        rows.append(row)
    common.print_table(
        f"test accuracy (%) on digits, {FLAGS.epochs} epochs, {FLAGS.seeds} seeds "
        "(mean +- sample std)",
        ["rate", "plain (one per width)", "sliced", "sliced + in-place KD",
         "sliced - plain", "KD - plain"],
        rows,
    )
    common.write_json(
        "accuracy_digits",
        {
            "machine": facts,
            "flags": {
                k: FLAGS[k].value
                for k in ("epochs", "seeds", "batch", "learning_rate", "distillation_weight")
            },
            "accuracy": {
                kind: {str(r): accuracy[kind][r] for r in RATES} for kind in kinds
            },
            "mean_std": {
                kind: {str(r): stats[kind][r] for r in RATES} for kind in kinds
            },
            "seconds": time.perf_counter() - started,
        },
        FLAGS.output,
    )


if __name__ == "__main__":
    app.run(main)
