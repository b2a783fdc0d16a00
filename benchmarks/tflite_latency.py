"""LiteRT latency of every exported width against a natively narrow model.

Each width of a sliced CNN is cut out with `extract_submodel` and converted
like any plain model; the physical limit is a plain Keras model built
directly at that width and converted the same way. Target: sliced / native
within 1.00 +- 0.05 at every width. Also reports latency against MACs.
Prints a table and writes benchmarks/results/tflite_latency.json.

    python benchmarks/tflite_latency.py [--repeats 31] [--threads 1]
        [--quantization float32] [--output PATH]
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from benchmarks import common  # noqa: E402
from keras_slicing import interpreter as interpreter_lib  # noqa: E402
from keras_slicing import layers  # noqa: E402
from keras_slicing import model_cost  # noqa: E402
from keras_slicing import rate_input  # noqa: E402
from keras_slicing.export import convert_to_tflite  # noqa: E402
from keras_slicing.export import tflite_op_names  # noqa: E402
from keras_slicing.extract import extract_submodel  # noqa: E402
from keras_slicing.rates import DEFAULT_SLICE_GROUPS  # noqa: E402
from keras_slicing.rates import active_width  # noqa: E402

flags.DEFINE_integer("repeats", 31, "Interleaved timing rounds.")
flags.DEFINE_integer("threads", 1, "LiteRT interpreter threads.")
flags.DEFINE_integer("batch", 1, "Examples per invoke.")
flags.DEFINE_enum(
    "quantization", "float32", ["float32", "float16", "dynamic", "int8"],
    "Quantization of both the sliced and the native files.",
)
flags.DEFINE_string("output", None, "JSON path (default benchmarks/results/).")
FLAGS = flags.FLAGS

RATES = (1.0, 0.75, 0.5, 0.25)
INPUT_SHAPE = (32, 32, 3)
# (filters, stride) of the 3x3 conv-BN-ReLU blocks after a 32-filter stem.
BLOCKS = ((64, 2), (64, 1), (128, 2), (128, 1), (256, 2))


def sliced_model():
    x = keras.Input(INPUT_SHAPE, name="image")
    rate = rate_input()
    h = layers.SlicedConv2D(32, 3, padding="same", slice_input=False)(x, rate)
    h = layers.SlicedBatchNormalization(rates=RATES)(h, rate)
    h = keras.layers.ReLU()(h)
    for filters, stride in BLOCKS:
        h = layers.SlicedConv2D(filters, 3, strides=stride, padding="same")(h, rate)
        h = layers.SlicedBatchNormalization(rates=RATES)(h, rate)
        h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    y = layers.SlicedDense(10, slice_output=False, name="logits")(h, rate)
    return keras.Model([x, rate], y, name="cnn")


def native_model(rate):
    """The same network written directly at the width of `rate`."""

    def width(filters):
        return active_width(filters, rate, DEFAULT_SLICE_GROUPS)

    x = keras.Input(INPUT_SHAPE, name="image")
    h = keras.layers.Conv2D(width(32), 3, padding="same")(x)
    h = keras.layers.BatchNormalization()(h)
    h = keras.layers.ReLU()(h)
    for filters, stride in BLOCKS:
        h = keras.layers.Conv2D(width(filters), 3, strides=stride, padding="same")(h)
        h = keras.layers.BatchNormalization()(h)
        h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    y = keras.layers.Dense(10, name="logits")(h)
    return keras.Model(x, y, name=f"native_{rate:g}")


def main(_):
    import ai_edge_litert

    logging.set_verbosity(logging.WARNING)  # one line per converted file
    facts = common.machine_facts()
    facts["litert"] = getattr(ai_edge_litert, "__version__", "unknown")
    facts["litert_threads"] = FLAGS.threads
    print("machine:", facts)
    keras.utils.set_random_seed(0)
    model = sliced_model()
    representative = None
    if FLAGS.quantization == "int8":
        representative = np.random.default_rng(0).random((64, *INPUT_SHAPE))

    files = {}
    for rate in RATES:
        for kind, plain in (
            ("sliced", extract_submodel(model, rate)),
            ("native", native_model(rate)),
        ):
            files[kind, rate] = convert_to_tflite(
                plain, FLAGS.quantization, representative
            )
    keys = list(files)
    interpreters = []
    for key in keys:
        interpreter = interpreter_lib.load_interpreter(
            model_content=files[key], num_threads=FLAGS.threads
        )
        interpreter_lib.set_random_input(interpreter, FLAGS.batch)
        interpreters.append(interpreter)
    rounds = dict(
        zip(keys, interpreter_lib.latency_rounds(interpreters, FLAGS.repeats, 0.03))
    )
    seconds = {key: float(np.median(times)) for key, times in rounds.items()}

    full_ms = seconds["sliced", 1.0] * 1e3
    full_macs = model_cost(model, 1.0)["macs"]
    rows, results = [], []
    for rate in RATES:
        sliced_ms = seconds["sliced", rate] * 1e3
        native_ms = seconds["native", rate] * 1e3
        # Paired within each round, the ratio is immune to slow phases of a
        # shared machine that a ratio of medians still feels.
        paired = float(
            np.median(np.divide(rounds["sliced", rate], rounds["native", rate]))
        )
        macs = model_cost(model, rate)["macs"]
        same_ops = tflite_op_names(files["sliced", rate]) == tflite_op_names(
            files["native", rate]
        )
        result = {
            "rate": rate,
            "sliced_ms": sliced_ms,
            "native_ms": native_ms,
            "sliced_over_native": paired,
            "ratio_of_medians": sliced_ms / native_ms,
            "sliced_bytes": len(files["sliced", rate]),
            "native_bytes": len(files["native", rate]),
            "same_ops": same_ops,
            "macs": macs,
            "latency_over_full": sliced_ms / full_ms,
            "macs_over_full": macs / full_macs,
            "ns_per_mac": sliced_ms * 1e6 / macs,
        }
        results.append(result)
        rows.append(
            (
                f"{rate:g}",
                f"{sliced_ms:.3f}",
                f"{native_ms:.3f}",
                f"{result['sliced_over_native']:.3f}",
                f"{result['sliced_bytes']:,}/{result['native_bytes']:,}",
                "yes" if same_ops else "NO",
                f"{macs / 1e6:.2f}",
                f"{result['latency_over_full']:.3f}",
                f"{result['macs_over_full']:.3f}",
                f"{result['ns_per_mac']:.3f}",
            )
        )
    # Latency against MACs across widths: slope of log(ms) on log(MACs).
    slope = float(
        np.polyfit(
            np.log([r["macs"] for r in results]),
            np.log([r["sliced_ms"] for r in results]),
            1,
        )[0]
    )
    common.print_table(
        f"LiteRT {FLAGS.quantization}, {FLAGS.threads} thread(s), batch "
        f"{FLAGS.batch}, 32x32x3 CNN (6 conv-BN-ReLU, GAP, dense), median of "
        f"{FLAGS.repeats} interleaved rounds (sliced/native: median of "
        "per-round ratios)",
        [
            "rate", "sliced ms", "native ms", "sliced/native", "bytes s/n",
            "same ops", "MMACs", "ms x r=1", "MACs x r=1", "ns/MAC",
        ],
        rows,
    )
    ratios = [r["sliced_over_native"] for r in results]
    targets = {"sliced_over_native_within_0.95_1.05": all(
        0.95 <= ratio <= 1.05 for ratio in ratios
    )}
    print(f"log-log slope of latency on MACs: {slope:.3f}")
    print("targets met:", targets)
    common.write_json(
        "tflite_latency",
        {
            "machine": facts,
            "quantization": FLAGS.quantization,
            "threads": FLAGS.threads,
            "batch": FLAGS.batch,
            "repeats": FLAGS.repeats,
            "widths": results,
            "latency_macs_loglog_slope": slope,
            "targets": targets,
        },
        FLAGS.output,
    )


if __name__ == "__main__":
    app.run(main)
