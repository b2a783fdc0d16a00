"""Test accuracy and size of every width under each TFLite quantization.

Trains the demo's sliced CNN (`examples/digits.py`: conv32-GN-conv64-GN-GAP-
dense, digits, stratified 75/25 split) once, then exports it with every
quantization of `export_tflite`: float32, float16, dynamic (int8 weights),
int8 (activations calibrated on all training images) and int8 with int8
input and output. Each file's test accuracy is the one `export_tflite`
writes to the manifest from `evaluation_data`, computed with LiteRT.

Prints a table and writes benchmarks/results/quantization.json.

    python benchmarks/quantization.py [--epochs=40] [--seed=0]
"""

import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

import keras_slicing  # noqa: E402
from benchmarks import common  # noqa: E402
from examples import digits  # noqa: E402

VARIANTS = {
    "float32": {"quantization": "float32"},
    "float16": {"quantization": "float16"},
    "dynamic": {"quantization": "dynamic"},
    "int8": {"quantization": "int8"},
    "int8, int8 I/O": {"quantization": "int8", "int8_io": True},
}

flags.DEFINE_integer("epochs", 40, "Training epochs of the sliced model.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("seed", 0, "Random seed (split, weights, rates).")
flags.DEFINE_string("output", None, "JSON path (default benchmarks/results/).")
FLAGS = flags.FLAGS


def train(x_train, y_train, epochs, batch_size, seed):
    import keras

    keras.utils.set_random_seed(seed)
    model = digits.sliced_cnn(seed)
    steps = epochs * -(-len(x_train) // batch_size)
    digits.compile_for_digits(model, steps)
    model.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, verbose=0)
    return model


def export_every_variant(model, x_train, x_test, y_test):
    """`{variant: manifest}`, each bundle scored on the test split."""
    manifests = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, kwargs in VARIANTS.items():
            representative = x_train if kwargs["quantization"] == "int8" else None
            manifests[name] = keras_slicing.export_tflite(
                model, os.path.join(tmp, name.replace(", ", "_").replace(" ", "_")),
                representative_data=representative, evaluation_data=(x_test, y_test),
                **kwargs,
            )
    return manifests


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # the converter logs every file
    started = time.time()
    x_train, x_test, y_train, y_test = digits.digits_split(FLAGS.seed)
    model = train(x_train, y_train, FLAGS.epochs, FLAGS.batch_size, FLAGS.seed)
    manifests = export_every_variant(model, x_train, x_test, y_test)

    rows = []
    for i, entry in enumerate(manifests["float32"]["rates"]):
        row = {"rate": entry["rate"], "params": entry["params"], "macs": entry["macs"]}
        for name, manifest in manifests.items():
            row[f"accuracy {name}"] = manifest["rates"][i]["accuracy"]
            row[f"bytes {name}"] = manifest["rates"][i]["bytes"]
        rows.append(row)
    common.print_table(
        f"digits CNN, {FLAGS.epochs} epochs: test accuracy per width and quantization",
        ["rate", "params", "MACs", *VARIANTS, "float32 bytes", "int8 bytes"],
        [[r["rate"], f"{r['params']:,}", f"{r['macs']:,}",
          *(f"{r[f'accuracy {name}']:.3f}" for name in VARIANTS),
          f"{r['bytes float32']:,}", f"{r['bytes int8']:,}"] for r in rows],
    )
    common.write_json("quantization", {
        "machine": common.machine_facts(),
        "flags": {"epochs": FLAGS.epochs, "batch_size": FLAGS.batch_size,
                  "seed": FLAGS.seed},
        "data": "digits, stratified 75/25 split; int8 calibrated on the training images",
        "test_examples": len(x_test),
        "widths": rows,
        "seconds": round(time.time() - started, 1),
    }, FLAGS.output)


if __name__ == "__main__":
    app.run(main)
