"""Slice a Keras model you already have, fine-tune it, export every width.

Trains an ordinary Keras CNN (batch normalization, no keras_slicing) on
scikit-learn's 8x8 digits, converts it with `keras_slicing.slice_model`,
measures each width's test accuracy right after conversion, fine-tunes all
widths at once with the library's default recipe (`SlicingModel.fit`: every
rate each step, narrow rates weighted more), measures again, prints the
per-width table and writes:

    OUTPUT_DIR/sliced_cnn.keras     the fine-tuned sliced model
    OUTPUT_DIR/tflite/              one .tflite per width + manifest.json
    OUTPUT_DIR/results.json         every number printed

Usage:

    python examples/slice_existing_model.py [--epochs=30] [--finetune_epochs=10]
        [--output_dir=results_sliced]
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import keras_slicing  # noqa: E402

FLAGS = flags.FLAGS


def define_flags():
    # Defined only when run as a script, so importing this module never
    # clashes with flags of the same name elsewhere.
    flags.DEFINE_integer("epochs", 30, "Epochs of the plain model's training.")
    flags.DEFINE_integer("finetune_epochs", 10, "Epochs of fine-tuning every width.")
    flags.DEFINE_integer("seed", 0, "Random seed (split, weights, rates).")
    flags.DEFINE_string("output_dir", "results_sliced", "Where everything is written.")
    flags.DEFINE_integer("verbose", 0, "Keras fit verbosity.")


def digits_split(seed):
    """Stratified 75/25 train/test split of the digits, images in [0, 1]."""
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    return train_test_split(
        x, digits.target, test_size=0.25, stratify=digits.target, random_state=seed
    )


def plain_cnn():
    """The model a user brings: plain Keras layers, batch normalization."""
    return keras.Sequential([
        keras.Input((8, 8, 1), name="image"),
        keras.layers.Conv2D(32, 3, padding="same", use_bias=False, name="conv1"),
        keras.layers.BatchNormalization(name="bn1"),
        keras.layers.ReLU(),
        keras.layers.Conv2D(64, 3, strides=2, padding="same", use_bias=False, name="conv2"),
        keras.layers.BatchNormalization(name="bn2"),
        keras.layers.ReLU(),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10, name="logits"),
    ], name="digits_cnn")


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def width_accuracies(model, x, y):
    """Test accuracy of every width of a `SlicingModel`."""
    return {
        rate: logs["accuracy"]
        for rate, logs in model.evaluate_rates(x, y, batch_size=512).items()
    }


def run(output_dir, epochs=30, finetune_epochs=10, seed=0, verbose=0):
    """Trains, slices, fine-tunes and exports; returns the results."""
    keras.utils.set_random_seed(seed)
    x_train, x_test, y_train, y_test = digits_split(seed)

    plain = plain_cnn()
    plain.compile(keras.optimizers.Adam(3e-3), _loss(), metrics=["accuracy"])
    plain.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=verbose)
    plain_accuracy = plain.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"]

    sliced = keras_slicing.slice_model(plain, seed=seed)
    print(sliced.slicing_plan)
    # About three times the rate the plain model trained at: the narrow
    # widths start near chance and need large steps (docs/fine-tuning.md).
    sliced.compile(keras.optimizers.Adam(1e-2), _loss(), metrics=["accuracy"])
    # Every width gets batch-norm statistics of its own before it is scored:
    # right after conversion they are the full network's.
    keras_slicing.calibrate_batchnorm(sliced, x_train)
    before = width_accuracies(sliced, x_test, y_test)

    sliced.fit(x_train, y_train, epochs=finetune_epochs, batch_size=64, verbose=verbose)
    keras_slicing.calibrate_batchnorm(sliced, x_train)
    after = width_accuracies(sliced, x_test, y_test)

    os.makedirs(output_dir, exist_ok=True)
    sliced.save(os.path.join(output_dir, "sliced_cnn.keras"))
    manifest = keras_slicing.export_tflite(
        sliced, os.path.join(output_dir, "tflite"), evaluation_data=(x_test, y_test)
    )
    tflite = {entry["rate"]: entry for entry in manifest["rates"]}
    rows = []
    for rate in sliced.rates:
        rows.append({
            "rate": rate,
            "macs": sliced.slicing_plan.costs[rate]["macs"],
            "params": sliced.slicing_plan.costs[rate]["params"],
            "accuracy_converted": before[rate],
            "accuracy_finetuned": after[rate],
            "tflite_accuracy": tflite[rate].get("accuracy"),
            "tflite_bytes": tflite[rate].get("bytes"),
        })
    results = {
        "plain_accuracy": plain_accuracy,
        "epochs": epochs,
        "finetune_epochs": finetune_epochs,
        "seed": seed,
        "widths": rows,
    }
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print_table(results)
    return results


def print_table(results):
    print(f"\nplain model: test accuracy {results['plain_accuracy']:.3f}")
    print(f"{'rate':>5}  {'MACs':>8}  {'params':>7}  {'converted':>9}  "
          f"{'fine-tuned':>10}  {'TFLite':>6}")
    for row in results["widths"]:
        tflite = row["tflite_accuracy"]
        print(
            f"{row['rate']:>5g}  {row['macs']:>8,}  {row['params']:>7,}  "
            f"{row['accuracy_converted']:>9.3f}  {row['accuracy_finetuned']:>10.3f}  "
            f"{'' if tflite is None else format(tflite, '.3f'):>6}"
        )


def main(argv):
    del argv
    run(FLAGS.output_dir, FLAGS.epochs, FLAGS.finetune_epochs, FLAGS.seed, FLAGS.verbose)


if __name__ == "__main__":
    define_flags()
    app.run(main)
