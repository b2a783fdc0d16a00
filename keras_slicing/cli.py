"""The `keras-slicing` command: export, inspect and time TFLite bundles.

usage:
    keras-slicing export MODEL.keras OUT_DIR [--rates=1,0.5]
        [--quantization=float32|float16|dynamic|int8]
        [--representative_data=FILE.npy] [--int8_io]
        [--evaluation_data=FILE.npz] [--output_kind=KIND]
        [--single_file [--sharing=views|slices|copies]]
    keras-slicing info BUNDLE
    keras-slicing bench BUNDLE [--num_threads=1] [--batch_size=1] [--repeats=15]

commands:
    export  cut every rate out of a saved sliced model and write a TFLite
            bundle (one file per width + manifest.json; with
            --single_file, one file holding every width as a signature)
    info    verify a bundle and print its manifest
    bench   time every width of a bundle on this machine
"""

import os
import sys

import keras
import numpy as np
from absl import app
from absl import flags
from absl import logging

import keras_slicing  # noqa: F401 (registers the sliced layers for loading)
from keras_slicing import interpreter as interpreter_lib
from keras_slicing.export import export_tflite
from keras_slicing.export import read_manifest
from keras_slicing.rates import format_rate

_RATES = flags.DEFINE_list(
    "rates", None, "export: comma-separated slice rates (default: the model's)."
)
_QUANTIZATION = flags.DEFINE_enum(
    "quantization",
    "float32",
    ["float32", "float16", "dynamic", "int8"],
    "export: weight/activation types of the files.",
)
_REPRESENTATIVE_DATA = flags.DEFINE_string(
    "representative_data",
    None,
    "export: .npy array of example inputs that calibrates int8.",
)
_INT8_IO = flags.DEFINE_bool(
    "int8_io", False, "export: with int8, int8 input and output tensors too."
)
_EVALUATION_DATA = flags.DEFINE_string(
    "evaluation_data",
    None,
    "export: .npz with arrays `x` (inputs) and `y` (labels); each file's "
    "accuracy is measured.",
)
_OUTPUT_KIND = flags.DEFINE_string(
    "output_kind",
    None,
    "export: what the output means (multiclass_logits, binary_probability, "
    "regression, ...); default: inferred from the model.",
)
_SINGLE_FILE = flags.DEFINE_bool(
    "single_file", False,
    "export: one .tflite holding every width as a signature (rate_1, ...).",
)
_SHARING = flags.DEFINE_enum(
    "sharing", "views", ["views", "slices", "copies"],
    "export: with --single_file, how narrow widths reuse wider weights "
    "(slices: every weight stored once, but sliced kernels run slower).",
)
_NUM_THREADS = flags.DEFINE_integer(
    "num_threads", 1, "bench: interpreter threads.", lower_bound=1
)
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 1, "bench: examples per invoke.", lower_bound=1
)
_REPEATS = flags.DEFINE_integer(
    "repeats", 15, "bench: interleaved timing rounds.", lower_bound=1
)

_USAGE = (
    "usage: keras-slicing export MODEL.keras OUT_DIR [flags] | "
    "info BUNDLE | bench BUNDLE [flags]"
)


def main(argv):
    """Runs a command on `argv` left after absl flag parsing."""
    args = list(argv[1:])
    commands = {"export": (_export, 2), "info": (_info, 1), "bench": (_bench, 1)}
    if not args or args[0] not in commands:
        raise app.UsageError(
            f"expected a command: export, info or bench. Received: "
            f"{args[0] if args else None!r}\n{_USAGE}"
        )
    if not flags.FLAGS["verbosity"].present:
        # The converter logs every temporary SavedModel it writes.
        logging.set_verbosity(logging.WARNING)
    command, arity = commands[args[0]]
    if len(args) - 1 != arity:
        raise app.UsageError(
            f"'{args[0]}' takes {arity} argument(s). Received: {args[1:]}\n{_USAGE}"
        )
    try:
        command(*args[1:])
    except (ValueError, OSError, KeyError, TypeError) as error:
        print(f"keras-slicing {args[0]}: error: {error}", file=sys.stderr)
        return 1
    return 0


_HELP_FLAGS = ("-h", "--help", "--helpshort", "-?")


def usage():
    """The command's own help: its commands and their flags."""
    return (
        f"{__doc__.strip()}\n\nflags:\n{flags.FLAGS.module_help(__name__)}\n\n"
        "(--helpfull lists every flag, TensorFlow's included.)"
    )


def run(argv=None):
    """Entry point of the `keras-slicing` console script."""
    argv = list(sys.argv if argv is None else argv)
    if any(arg in _HELP_FLAGS for arg in argv[1:]):
        # absl's own --help describes the flags of the script's __main__,
        # which for a console script is a wrapper without any.
        print(usage())
        return 0
    app.run(_main, argv=argv)


def _main(argv):
    try:
        return main(argv)
    except app.UsageError as error:
        print(f"keras-slicing: error: {error}\n\n{usage()}", file=sys.stderr)
        return 2


def _export(model_path, output_dir):
    representative = None
    if _REPRESENTATIVE_DATA.value:
        representative = _load_array(_REPRESENTATIVE_DATA.value, "representative_data")
    evaluation = None
    if _EVALUATION_DATA.value:
        evaluation = _load_labelled(_EVALUATION_DATA.value)
    model = keras.saving.load_model(model_path, compile=False)
    manifest = export_tflite(
        model,
        output_dir,
        rates=_RATES.value,
        quantization=_QUANTIZATION.value,
        representative_data=representative,
        evaluation_data=evaluation,
        int8_io=_INT8_IO.value,
        output_kind=_OUTPUT_KIND.value,
        single_file=_SINGLE_FILE.value,
        sharing=_SHARING.value,
    )
    if _SINGLE_FILE.value:
        print(
            f"Wrote {len(manifest['rates'])} widths as signatures of one file "
            f"(sharing={_SHARING.value}) to {output_dir}"
        )
    else:
        print(f"Wrote {len(manifest['rates'])} files to {output_dir}")
    _print_manifest(manifest)


def _load_array(path, flag):
    """One array from an .npy file, or from an .npz holding `x` or one array."""
    loaded = np.load(path, allow_pickle=False)
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded as arrays:
        names = list(arrays.files)
        if "x" in names or len(names) == 1:
            return arrays["x" if "x" in names else names[0]]
    raise ValueError(
        f"--{flag} must be an .npy array, or an .npz with an array 'x' (or a "
        f"single array). Received: {path} with arrays {names}"
    )


def _load_labelled(path):
    """`(x, y)` from an .npz with arrays `x` and `y`."""
    loaded = np.load(path, allow_pickle=False)
    if isinstance(loaded, np.ndarray):
        raise ValueError(
            "--evaluation_data needs inputs and labels: an .npz with arrays "
            "'x' and 'y' (np.savez(path, x=..., y=...)). Received: "
            f"{path}, an .npy holding one array of shape {loaded.shape}"
        )
    with loaded as arrays:
        if not {"x", "y"} <= set(arrays.files):
            raise ValueError(
                "--evaluation_data must be an .npz with arrays 'x' and "
                f"'y'. Received: {path} with arrays {arrays.files}"
            )
        return arrays["x"], arrays["y"]


def _info(bundle_dir):
    _print_manifest(read_manifest(bundle_dir))


def _bench(bundle_dir):
    manifest = read_manifest(bundle_dir)
    interpreters = []
    for entry in manifest["rates"]:
        interpreter = interpreter_lib.load_interpreter(
            os.path.join(bundle_dir, entry["file"]),
            num_threads=_NUM_THREADS.value,
        )
        if "signature" in entry:  # a single-file bundle: time the signature
            interpreter = interpreter_lib.SignatureCall(
                interpreter, entry["signature"], _BATCH_SIZE.value
            )
        else:
            interpreter_lib.set_random_input(interpreter, _BATCH_SIZE.value)
        interpreters.append(interpreter)
    seconds = interpreter_lib.measure_latencies(interpreters, _REPEATS.value)
    print(
        f"{manifest['model_name']}: {manifest['quantization']}, batch "
        f"{_BATCH_SIZE.value}, {_NUM_THREADS.value} thread(s), median of "
        f"{_REPEATS.value} interleaved rounds"
    )
    rows = [("rate", "ms", "vs widest", "MACs", "vs widest")]
    for entry, s in zip(manifest["rates"], seconds):
        rows.append(
            (
                format_rate(entry["rate"]),
                f"{s * 1e3:.4f}",
                f"{s / seconds[0]:.3f}",
                f"{entry['macs']:,}",
                f"{entry['macs'] / manifest['rates'][0]['macs']:.3f}",
            )
        )
    _print_table(rows)


def _print_manifest(manifest):
    print(
        f"{manifest['model_name']}: {manifest['format']} "
        f"v{manifest['format_version']}, {manifest['quantization']}, "
        f"created by {manifest['created_by']}"
    )
    for role in ("input", "output"):
        tensor = manifest[role]
        shape = ", ".join("None" if d is None else str(d) for d in tensor["shape"])
        quantization = tensor["quantization"]
        extra = ""
        if quantization:
            extra = (
                f" (scale {quantization['scale']:.6g}, zero point "
                f"{quantization['zero_point']})"
            )
        print(f"  {role:<6} {tensor['name']}: [{shape}] {tensor['dtype']}{extra}")
    print(f"  output kind: {manifest.get('output_kind', 'multiclass')}")
    # Which evaluation each entry holds (v2 names it; v1 means accuracy).
    metric = manifest.get("metric") or "accuracy"
    rows = [("rate", "file", "bytes", "params", "MACs", metric)]
    for entry in manifest["rates"]:
        accuracy = entry.get(metric)
        file = entry["file"]
        if "signature" in entry:
            file = f"{file}:{entry['signature']}"
        rows.append(
            (
                format_rate(entry["rate"]),
                file,
                f"{entry['bytes']:,}",
                f"{entry['params']:,}",
                f"{entry['macs']:,}",
                "-" if accuracy is None else f"{accuracy:.4f}",
            )
        )
    _print_table(rows)


def _print_table(rows):
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(str(c).rjust(w) for c, w in zip(row, widths)))


if __name__ == "__main__":
    run()
