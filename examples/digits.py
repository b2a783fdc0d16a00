"""Model slicing on scikit-learn's handwritten digits, end to end.

Trains ONE sliced CNN with group normalization on the 8x8 digits that ship
with scikit-learn (real data, no download) with the library's defaults (rates
1, 0.75, 0.5, 0.25, every rate each step, narrow rates weighted more),
trains a plain CNN of each width on its own for comparison, then for every
width prints the parameters, MACs, test accuracy (and that of the plain
model), TFLite file size, TFLite accuracy and measured LiteRT latency, and
writes:

    OUTPUT_DIR/digits_cnn.keras          the sliced Keras model
    OUTPUT_DIR/tflite/                   one .tflite per width + manifest.json
    OUTPUT_DIR/results.json              every number printed
    OUTPUT_DIR/accuracy_vs_macs.png      accuracy against MACs per width

--nobaselines skips the plain models (a third of the time). Usage:

    python examples/digits.py [--epochs=40] [--nobaselines] [--output_dir=results]
"""

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import keras_slicing  # noqa: E402
from keras_slicing import layers  # noqa: E402
from keras_slicing.callbacks import SlicedValidation  # noqa: E402
from keras_slicing.interpreter import load_interpreter  # noqa: E402
from keras_slicing.interpreter import measure_latencies  # noqa: E402
from keras_slicing.interpreter import set_random_input  # noqa: E402
from keras_slicing.rates import DEFAULT_RATES  # noqa: E402
from keras_slicing.rates import active_width  # noqa: E402

FLAGS = flags.FLAGS
WIDTHS = (32, 64)  # channels of the two convolutions at full width
GROUP_NORM_GROUPS = 8


def define_flags():
    # Defined only when run as a script, so importing this module never
    # clashes with flags of the same name elsewhere.
    flags.DEFINE_integer("epochs", 40, "Training epochs.")
    flags.DEFINE_integer("batch_size", 64, "Batch size.")
    flags.DEFINE_integer("seed", 0, "Random seed (split, weights, rates).")
    flags.DEFINE_bool("baselines", True, "Also train a plain model per width.")
    flags.DEFINE_enum(
        "quantization", "float32", ["float32", "float16", "dynamic", "int8"],
        "Quantization of the TFLite bundle.",
    )
    flags.DEFINE_integer("latency_repeats", 21, "Timing rounds per width.")
    flags.DEFINE_string("output_dir", "results", "Where everything is written.")
    flags.DEFINE_integer("verbose", 1, "Keras fit verbosity (1: progress bars).")


def digits_split(seed):
    """Stratified 75/25 train/test split of the digits, images in [0, 1]."""
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    return train_test_split(
        x, digits.target, test_size=0.25, stratify=digits.target, random_state=seed
    )


def sliced_cnn(seed=0):
    """conv32-GN-ReLU-conv64/2-GN-ReLU-GAP-dense, every layer sliced."""
    x = keras.Input((8, 8, 1), name="image")
    rate = keras_slicing.rate_input()
    h = layers.SlicedConv2D(WIDTHS[0], 3, padding="same", slice_input=False)(x, rate)
    h = layers.SlicedGroupNormalization(groups=GROUP_NORM_GROUPS)(h, rate)
    h = keras.layers.ReLU()(h)
    h = layers.SlicedConv2D(WIDTHS[1], 3, strides=2, padding="same")(h, rate)
    h = layers.SlicedGroupNormalization(groups=GROUP_NORM_GROUPS)(h, rate)
    h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    y = layers.SlicedDense(10, slice_output=False, name="logits")(h, rate)
    return keras_slicing.SlicingModel(
        [x, rate], y, rates=DEFAULT_RATES, seed=seed, name="digits_cnn"
    )


def plain_cnn(rate):
    """The same architecture built directly at the width of `rate`."""
    c1, c2 = (active_width(w, rate, 8) for w in WIDTHS)
    groups = active_width(GROUP_NORM_GROUPS, rate, 8)
    x = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Conv2D(c1, 3, padding="same")(x)
    h = keras.layers.GroupNormalization(groups=groups)(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Conv2D(c2, 3, strides=2, padding="same")(h)
    h = keras.layers.GroupNormalization(groups=groups)(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    y = keras.layers.Dense(10, name="logits")(h)
    return keras.Model(x, y, name=f"plain_cnn_{rate:g}")


def compile_for_digits(model, steps):
    # Cosine decay lets the narrow widths settle after the wide ones have.
    schedule = keras.optimizers.schedules.CosineDecay(3e-3, steps)
    model.compile(
        keras.optimizers.Adam(schedule),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def train_baselines(x_train, y_train, x_test, y_test, epochs, batch_size, seed):
    accuracy = {}
    for rate in DEFAULT_RATES:
        keras.utils.set_random_seed(seed)
        steps = epochs * -(-len(x_train) // batch_size)
        model = compile_for_digits(plain_cnn(rate), steps)
        model.fit(x_train, y_train, epochs=epochs, batch_size=batch_size, verbose=0)
        accuracy[rate] = float(model.evaluate(x_test, y_test, verbose=0)[1])
        print(f"  plain model at width {rate:g}: test accuracy {accuracy[rate]:.4f}")
    return accuracy


def tflite_latencies_ms(bundle_dir, manifest, repeats):
    """Median LiteRT latency per width: 1 thread, batch 1, interleaved."""
    interpreters = []
    for entry in manifest["rates"]:
        interpreter = load_interpreter(
            os.path.join(bundle_dir, entry["file"]), num_threads=1
        )
        set_random_input(interpreter, batch_size=1)
        interpreters.append(interpreter)
    seconds = measure_latencies(interpreters, repeats=repeats)
    return {e["rate"]: s * 1000 for e, s in zip(manifest["rates"], seconds)}


def plot(path, rows, has_baselines):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    macs = [r["macs"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(macs, [r["accuracy"] for r in rows], "o-", label="one sliced model")
    if has_baselines:
        ax.plot(macs, [r["baseline_accuracy"] for r in rows], "s--",
                label="a plain model per width")
    for r in rows:
        ax.annotate(f"r={r['rate']:g}", (r["macs"], r["accuracy"]),
                    textcoords="offset points", xytext=(5, -12))
    ax.set_xscale("log")
    ax.set_xlabel("MACs per example")
    ax.set_ylabel("test accuracy")
    ax.set_title("Digits: accuracy against cost, every width")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(output_dir, epochs=40, batch_size=64, seed=0, baselines=True,
        quantization="float32", latency_repeats=21, verbose=1):
    """The whole job; returns the results dictionary written to results.json."""
    started = time.time()
    keras.utils.set_random_seed(seed)
    x_train, x_test, y_train, y_test = digits_split(seed)
    x_fit, x_val, y_fit, y_val = train_test_split(
        x_train, y_train, test_size=0.1, stratify=y_train, random_state=seed
    )
    print(f"digits: {len(x_fit)} train / {len(x_val)} validation / {len(x_test)} test")

    steps = epochs * -(-len(x_fit) // batch_size)
    model = compile_for_digits(sliced_cnn(seed), steps)
    model.fit(
        x_fit, y_fit, epochs=epochs, batch_size=batch_size, verbose=verbose,
        callbacks=[SlicedValidation((x_val, y_val))],
    )
    test = model.evaluate_rates(x_test, y_test)

    os.makedirs(output_dir, exist_ok=True)
    model_path = os.path.join(output_dir, "digits_cnn.keras")
    model.save(model_path)
    bundle_dir = os.path.join(output_dir, "tflite")
    manifest = keras_slicing.export_tflite(
        model, bundle_dir, quantization=quantization,
        representative_data=x_fit if quantization == "int8" else None,
        evaluation_data=(x_test, y_test),
    )
    latency = tflite_latencies_ms(bundle_dir, manifest, latency_repeats)

    baseline = None
    if baselines:
        print("\ntraining a plain model per width for comparison:")
        baseline = train_baselines(
            x_fit, y_fit, x_test, y_test, epochs, batch_size, seed
        )

    rows = []
    for entry in manifest["rates"]:
        rate = entry["rate"]
        rows.append({
            "rate": rate,
            "params": entry["params"],
            "macs": entry["macs"],
            "accuracy": float(test[rate]["accuracy"]),
            "tflite_accuracy": entry["accuracy"],
            "tflite_bytes": entry["bytes"],
            "tflite_latency_ms": latency[rate],
            **({"baseline_accuracy": baseline[rate]} if baseline else {}),
        })
    print_table(rows, quantization)

    plot_path = os.path.join(output_dir, "accuracy_vs_macs.png")
    plot(plot_path, rows, baseline is not None)
    results = {
        "data": "sklearn load_digits, stratified 75/25 split, seed %d" % seed,
        "epochs": epochs,
        "scheduler": model.get_config()["scheduler"],
        "quantization": quantization,
        "latency": "LiteRT, 1 thread, batch 1, median of interleaved rounds",
        "seconds": round(time.time() - started, 1),
        "widths": rows,
    }
    results_path = os.path.join(output_dir, "results.json")
    with open(results_path + ".tmp", "w") as f:
        json.dump(results, f, indent=2)
    os.replace(results_path + ".tmp", results_path)
    print(f"\nmodel:    {model_path}")
    print(f"bundle:   {bundle_dir}/ (manifest.json + {len(rows)} .tflite files)")
    print(f"results:  {results_path}")
    print(f"plot:     {plot_path}")
    print(f"finished in {results['seconds']:.0f} s")
    return results


def print_table(rows, quantization):
    header = ["width", "params", "MACs", "accuracy", f"TFLite {quantization}",
              "bytes", "latency ms"]
    if "baseline_accuracy" in rows[0]:
        header.append("plain model")
    lines = [header]
    for r in rows:
        line = [f"{r['rate']:g}", f"{r['params']:,}", f"{r['macs']:,}",
                f"{r['accuracy']:.4f}", f"{r['tflite_accuracy']:.4f}",
                f"{r['tflite_bytes']:,}", f"{r['tflite_latency_ms']:.4f}"]
        if "baseline_accuracy" in r:
            line.append(f"{r['baseline_accuracy']:.4f}")
        lines.append(line)
    widths = [max(len(c) for c in column) for column in zip(*lines)]
    print("\none sliced model, every width (test split):")
    for line in lines:
        print("  ".join(c.rjust(w) for c, w in zip(line, widths)))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # the converter logs every file
    run(FLAGS.output_dir, FLAGS.epochs, FLAGS.batch_size, FLAGS.seed,
        FLAGS.baselines, FLAGS.quantization, FLAGS.latency_repeats,
        FLAGS.verbose)


if __name__ == "__main__":
    define_flags()
    app.run(main)
