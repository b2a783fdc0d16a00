"""LiteRT latency of every exported width against a natively narrow model.

Each width of a sliced CNN is cut out with `extract_submodel` and converted
like any plain model; the physical limit is a plain Keras model built
directly at that width and converted the same way. Target: sliced / native
within 1.00 +- 0.05 at every width. Also reports latency against MACs.
Prints a table and writes benchmarks/results/tflite_latency.json.

    python benchmarks/tflite_latency.py [--repeats 31] [--threads 1]
        [--quantization float32] [--output PATH]

With `--single_file`, the single file of every width side by side with the
per-width files instead (`single_file_main`): for the four networks of
`single_file_nets.py` and each quantization, the size of the file under
each `sharing` mode against the widest per-width file and each signature's
largest difference from its per-width file; for `--timed_quantizations`,
each signature's latency against the per-width file (signature runners on
both sides, batch 1, interleaved rounds: median of per-round ratios, and
the ratio of the fastest rounds, which other jobs disturb least) and the
memory of one interpreter holding every width against one interpreter per
file. Writes
benchmarks/results/tflite_single_file.json.

    python benchmarks/tflite_latency.py --single_file [--repeats 21]
"""

import dataclasses
import os
import sys
import time

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
flags.DEFINE_bool("single_file", False, "Compare single files with per-width files.")
flags.DEFINE_list(
    "nets", "digits_cnn,mobilenet_like,char_lm,text_transformer",
    "With --single_file: the networks (benchmarks/single_file_nets.py).",
)
flags.DEFINE_list(
    "quantizations", "float32,float16,int8", "With --single_file: the quantizations."
)
flags.DEFINE_enum(
    "clock", "wall", ["wall", "thread"],
    "With --single_file: time invokes by wall clock or by the CPU time of the "
    "calling thread (1 LiteRT thread), which other jobs do not inflate.",
)
flags.DEFINE_integer("memory_repeats", 1, "With --single_file: processes per memory probe.")
flags.DEFINE_list(
    "timed_quantizations", "float32",
    "With --single_file: the quantizations whose latency and memory are "
    "measured too (the others: sizes and parity).",
)
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


def main(argv):
    if FLAGS.single_file:
        return single_file_main(argv)
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


_MEMORY_PROBE = """
import sys
from ai_edge_litert.interpreter import Interpreter
import numpy as np

def rss_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

x = np.load(sys.argv[1])
before = rss_kb()
keep = []
for spec in sys.argv[2:]:
    path, *keys = spec.split(",")
    interpreter = Interpreter(model_path=path, num_threads=1)
    for key in keys or [None]:
        runner = interpreter.get_signature_runner(key)
        (name,) = runner.get_input_details()
        runner(**{name: x})
    keep.append(interpreter)
print(rss_kb() - before)
"""


def _memory_kb(x, specs, directory):
    """Resident memory (KiB) that loading and running `specs` adds, measured
    in a fresh process (median of `--memory_repeats`)."""
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".npy", dir=directory, delete=False) as f:
        np.save(f, x)
    values = []
    for _ in range(FLAGS.memory_repeats):
        out = subprocess.run(
            [sys.executable, "-c", _MEMORY_PROBE, f.name, *specs],
            capture_output=True, text=True, check=True,
        )
        values.append(int(out.stdout.split()[-1]))
    return float(np.median(values))


def _single_file_case(net, quantization, directory):
    import pathlib

    from benchmarks import single_file_nets
    from keras_slicing.export import signature_key
    from keras_slicing.tflite_single_file import SHARING_MODES
    from keras_slicing.tflite_single_file import merge_widths
    from tests.sliced_models import randomize_weights

    keras.utils.set_random_seed(0)
    model, shape, dtype = single_file_nets.build(net)
    # The spread the committed results were measured with.
    randomize_weights(model, std=0.2)
    representative = None
    if quantization == "int8":
        representative = single_file_nets.examples(shape, dtype, 64)
    try:
        files = [
            convert_to_tflite(extract_submodel(model, rate), quantization, representative)
            for rate in RATES
        ]
    except Exception as error:  # noqa: BLE001 - recorded, not hidden
        return {"net": net, "quantization": quantization, "error": repr(error)[:300]}
    keys = [signature_key(rate) for rate in RATES]
    merged, reports = {}, {}
    for sharing in SHARING_MODES:
        merged[sharing], reports[sharing] = merge_widths(files, keys, sharing)
    x = single_file_nets.examples(shape, dtype, 1, seed=1)
    if quantization == "int8":
        detail = interpreter_lib.load_interpreter(model_content=files[0]).get_input_details()[0]
        if np.dtype(detail["dtype"]).kind == "f":
            x = x.astype("float32")

    # Parity: every signature against its per-width file.
    max_error = {}
    for sharing in ("views", "slices"):
        interpreter = interpreter_lib.load_interpreter(model_content=merged[sharing])
        errors = []
        for content, key in zip(files, keys):
            own = interpreter_lib.load_interpreter(model_content=content)
            want = interpreter_lib.SignatureCall(own, None, x=x).invoke()
            got = interpreter_lib.SignatureCall(interpreter, key, x=x).invoke()
            (want,), (got,) = want.values(), got.values()
            errors.append(float(np.max(np.abs(got.astype(float) - want.astype(float)))))
        max_error[sharing] = max(errors)

    case = {
        "net": net,
        "quantization": quantization,
        "params": int(model.count_params()),
        "widest_bytes": len(files[0]),
        "sum_of_files_bytes": sum(map(len, files)),
        "single_file_bytes": {k: len(v) for k, v in merged.items()},
        "over_widest": {k: len(v) / len(files[0]) for k, v in merged.items()},
        "stored_bytes": {
            k: [dataclasses.asdict(r) for r in v] for k, v in reports.items()
        },
        "max_abs_difference": max_error,
        "widths": [
            {"rate": rate, "file_bytes": len(content)}
            for rate, content in zip(RATES, files)
        ],
    }
    if quantization not in FLAGS.timed_quantizations:
        return case
    calls, names = [], []
    singles = {
        sharing: interpreter_lib.load_interpreter(
            model_content=merged[sharing], num_threads=FLAGS.threads
        )
        for sharing in ("views", "slices")
    }
    for content, key in zip(files, keys):
        own = interpreter_lib.load_interpreter(
            model_content=content, num_threads=FLAGS.threads
        )
        calls.append(interpreter_lib.SignatureCall(own, None, x=x))
        names.append(("file", key))
        for sharing, interpreter in singles.items():
            calls.append(interpreter_lib.SignatureCall(interpreter, key, x=x))
            names.append((sharing, key))
    clock = time.thread_time if FLAGS.clock == "thread" else time.perf_counter
    rounds = dict(
        zip(names, interpreter_lib.latency_rounds(calls, FLAGS.repeats, 0.02, clock))
    )

    directory = pathlib.Path(directory)
    paths = []
    for content, key in zip(files, keys):
        paths.append(directory / f"{net}_{quantization}_{key}.tflite")
        paths[-1].write_bytes(content)
    memory = {"files": _memory_kb(x, [str(p) for p in paths], directory)}
    for sharing in ("views", "slices"):
        path = directory / f"{net}_{quantization}_{sharing}.tflite"
        path.write_bytes(merged[sharing])
        memory[sharing] = _memory_kb(x, [",".join([str(path), *keys])], directory)

    for row, key in zip(case["widths"], keys):
        row["file_ms"] = float(np.median(rounds["file", key])) * 1e3
        row["file_best_ms"] = float(np.min(rounds["file", key])) * 1e3
        for sharing in ("views", "slices"):
            row[f"{sharing}_over_file"] = float(
                np.median(np.divide(rounds[sharing, key], rounds["file", key]))
            )
            # The fastest round of each is the least disturbed by other jobs.
            row[f"{sharing}_over_file_best"] = float(
                np.min(rounds[sharing, key]) / np.min(rounds["file", key])
            )
    case["memory_kib"] = memory
    return case


def single_file_main(_):
    import tempfile

    import ai_edge_litert

    logging.set_verbosity(logging.WARNING)
    facts = common.machine_facts()
    facts["litert"] = getattr(ai_edge_litert, "__version__", "unknown")
    facts["litert_threads"] = FLAGS.threads
    facts["shared_machine"] = "2 cores shared with other jobs; ratios are per-round"
    print("machine:", facts)
    cases = []
    with tempfile.TemporaryDirectory() as directory:
        for net in FLAGS.nets:
            for quantization in FLAGS.quantizations:
                case = _single_file_case(net, quantization, directory)
                cases.append(case)
                _print_single_file_case(case)
                # Written after every case, so a long run keeps what it has.
                common.write_json(
                    "tflite_single_file",
                    {
                        "machine": facts,
                        "threads": FLAGS.threads,
                        "batch": 1,
                        "repeats": FLAGS.repeats,
                        "clock": FLAGS.clock,
                        "rates": list(RATES),
                        "cases": cases,
                    },
                    FLAGS.output,
                )


def _print_single_file_case(case):
    title = f"{case['net']}, {case['quantization']}"
    if "error" in case:
        print(f"\n{title}: not converted: {case['error']}")
        return
    sizes = case["single_file_bytes"]
    over = case["over_widest"]
    memory = case.get("memory_kib")
    memory = (
        f" Memory KiB: files {memory['files']:.0f}, views {memory['views']:.0f}, "
        f"slices {memory['slices']:.0f}." if memory else ""
    )
    common.print_table(
        f"{title}: one file {sizes['views']:,} B views ({over['views']:.3f}x widest), "
        f"{sizes['slices']:,} B slices ({over['slices']:.3f}x), {sizes['copies']:,} B "
        f"copies ({over['copies']:.3f}x); per-width files {case['sum_of_files_bytes']:,} "
        f"B ({case['sum_of_files_bytes'] / case['widest_bytes']:.3f}x).{memory} Max "
        f"|diff| views {case['max_abs_difference']['views']:.2g}, slices "
        f"{case['max_abs_difference']['slices']:.2g}",
        [
            "rate", "file bytes", "file ms", "views/file", "slices/file",
            "best ms", "views best", "slices best",
        ],
        [
            (
                f"{w['rate']:g}", f"{w['file_bytes']:,}",
                f"{w.get('file_ms', float('nan')):.4f}",
                f"{w.get('views_over_file', float('nan')):.3f}",
                f"{w.get('slices_over_file', float('nan')):.3f}",
                f"{w.get('file_best_ms', float('nan')):.4f}",
                f"{w.get('views_over_file_best', float('nan')):.3f}",
                f"{w.get('slices_over_file_best', float('nan')):.3f}",
            )
            for w in case["widths"]
        ],
    )


if __name__ == "__main__":
    app.run(main)
