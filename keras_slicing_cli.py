"""The `keras-slicing` command: export, inspect and time TFLite bundles.

usage:
    keras-slicing export MODEL.keras OUT_DIR [--rates=1,0.5]
        [--quantization=float32|float16|dynamic|int8]
        [--representative_data=FILE.npy] [--int8_io]
        [--evaluation_data=FILE.npz] [--output_kind=KIND]
        [--single_file [--sharing=views|slices|copies]]
    keras-slicing info BUNDLE
    keras-slicing bench BUNDLE [--rates=1,0.5] [--num_threads=1]
        [--batch_size=1] [--repeats=15]
    any command: [--verbose] (the frameworks' own log lines)

commands:
    export  cut every rate out of a saved sliced model and write a TFLite
            bundle (one file per width + manifest.json; with
            --single_file, one file holding every width as a signature);
            runs on TensorFlow whatever KERAS_BACKEND says
    info    verify a bundle and print its manifest
    bench   time every width of a bundle (or those of --rates) here
"""

# This module sits outside the `keras_slicing` package on purpose: importing
# the package imports Keras and, through it, TensorFlow (3-6 s and a page of
# log lines), which `info` does not need. The heavy imports happen inside the
# commands that use them, after the log settings are made.

import contextlib
import os
import sys

from absl import app
from absl import flags
from absl import logging

_RATES = flags.DEFINE_list(
    "rates",
    None,
    "export, bench: comma-separated slice rates (default: all).",
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
    "export: .npz with arrays `x` (inputs) and `y` (labels); each file is "
    "scored on it (the metric of the output kind).",
)
_OUTPUT_KIND = flags.DEFINE_string(
    "output_kind",
    None,
    "export: what the output means (multiclass_logits, binary_probability, "
    "regression, ...); default: inferred from the model and its compiled loss.",
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
_VERBOSE = flags.DEFINE_bool(
    "verbose",
    False,
    "Show the frameworks' own log lines.",
)

# Which commands read each flag: any other command refuses it rather than
# ignoring it.
_FLAG_COMMANDS = {
    "rates": ("export", "bench"),
    "quantization": ("export",),
    "representative_data": ("export",),
    "int8_io": ("export",),
    "evaluation_data": ("export",),
    "output_kind": ("export",),
    "single_file": ("export",),
    "sharing": ("export",),
    "num_threads": ("bench",),
    "batch_size": ("bench",),
    "repeats": ("bench",),
}

_USAGE = (
    "usage: keras-slicing export MODEL.keras OUT_DIR [flags] | "
    "info BUNDLE | bench BUNDLE [flags]"
)
# What a failing command prints as one line: bad input, missing or
# tampered files, a model the checks refuse. Anything else is a bug and
# keeps its traceback.
_USER_ERRORS = (ValueError, OSError, KeyError, TypeError, OverflowError, RecursionError)


def main(argv):
    """Runs a command on `argv` left after absl flag parsing."""
    args = list(argv[1:])
    commands = {"export": (_export, 2), "info": (_info, 1), "bench": (_bench, 1)}
    if not args or args[0] not in commands:
        raise app.UsageError(
            f"expected a command: export, info or bench. Received: "
            f"{args[0] if args else None!r}\n{_USAGE}"
        )
    command, arity = commands[args[0]]
    if len(args) - 1 != arity:
        raise app.UsageError(
            f"'{args[0]}' takes {arity} argument(s). Received: {args[1:]}\n{_USAGE}"
        )
    for name, used_by in _FLAG_COMMANDS.items():
        if flags.FLAGS[name].present and args[0] not in used_by:
            raise app.UsageError(
                f"--{name} applies to {' and '.join(used_by)}, not to "
                f"'{args[0]}'.\n{_USAGE}"
            )
    _set_log_levels(_VERBOSE.value)
    try:
        command(*args[1:])
    except _USER_ERRORS as error:
        message = " ".join(str(error).split())  # one line, whatever it holds
        print(f"keras-slicing {args[0]}: error: {message}", file=sys.stderr)
        return 1
    return 0


def _set_log_levels(verbose):
    """Quiet unless `verbose`: TensorFlow's C++ logs (oneDNN, XLA, the
    converter) are read from the environment when TensorFlow is first
    imported, which happens after this, inside the commands."""
    if verbose:
        logging.set_verbosity(logging.INFO)
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if not flags.FLAGS["verbosity"].present:
        # The converter logs every temporary SavedModel it writes.
        logging.set_verbosity(logging.WARNING)
    if "tensorflow" in sys.modules:  # already imported (e.g. in tests)
        sys.modules["tensorflow"].get_logger().setLevel("ERROR")


_HELP_FLAGS = ("-h", "--help", "--helpshort", "-?")


def usage():
    """The command's own help: its commands and their flags."""
    return (
        f"{__doc__.strip()}\n\n"
        f"flags:\n{flags.FLAGS.module_help(sys.modules[__name__])}\n\n"
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
        if _VERBOSE.value:
            return main(argv)
        with _native_logs_hidden():
            return main(argv)
    except app.UsageError as error:
        print(f"keras-slicing: error: {error}\n\n{usage()}", file=sys.stderr)
        return 2


@contextlib.contextmanager
def _native_logs_hidden():
    """Sends what native code writes to stderr to /dev/null, Python's own
    stderr (errors, warnings, tracebacks) still to the terminal.

    TensorFlow 2.21 logs through C++ absl, which ignores
    TF_CPP_MIN_LOG_LEVEL for lines such as "oneDNN custom operations are
    on" (at import and again in the converter).
    """
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    python_stderr, sys.stderr = sys.stderr, os.fdopen(os.dup(saved), "w", buffering=1)
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stderr.close()
        sys.stderr = python_stderr
        os.dup2(saved, 2)
        os.close(saved)


def _export(model_path, output_dir):
    # TFLite conversion needs TensorFlow: the model is rebuilt there from its
    # .keras file, so the bundle is the same whatever KERAS_BACKEND says.
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "tensorflow"
    import numpy as np  # noqa: F401 (the loaders below)

    import keras

    import keras_slicing  # noqa: F401 (registers the sliced layers for loading)
    from keras_slicing.export import export_tflite

    representative = None
    if _REPRESENTATIVE_DATA.value:
        representative = _load_array(_REPRESENTATIVE_DATA.value, "representative_data")
    evaluation = None
    if _EVALUATION_DATA.value:
        evaluation = _load_labelled(_EVALUATION_DATA.value)
    model = _load_model(keras, model_path)
    manifest = export_tflite(
        model,
        output_dir,
        rates=_parsed_rates(_RATES.value),
        quantization=_QUANTIZATION.value,
        representative_data=representative,
        evaluation_data=evaluation,
        int8_io=_INT8_IO.value,
        output_kind=_OUTPUT_KIND.value,
        single_file=_SINGLE_FILE.value,
        sharing=_SHARING.value,
        verbose=1,
    )
    if _SINGLE_FILE.value:
        print(
            f"Wrote {len(manifest['rates'])} widths as signatures of one file "
            f"(sharing={_SHARING.value}) to {output_dir}"
        )
    else:
        print(f"Wrote {len(manifest['rates'])} files to {output_dir}")
    _print_manifest(manifest)


def _load_model(keras, path):
    """The saved model with its compile settings (the loss tells what the
    output means); without them, with a warning, when they do not load."""
    try:
        return keras.saving.load_model(path)
    except (ValueError, TypeError) as error:
        model = keras.saving.load_model(path, compile=False)
        print(
            f"keras-slicing export: warning: {path}'s compile settings did not "
            f"load ({' '.join(str(error).split())[:200]}); the output kind is "
            "inferred from the layers alone (pass --output_kind if it is "
            "ambiguous).",
            file=sys.stderr,
        )
        return model


def _load_array(path, flag):
    """One array from an .npy file, or from an .npz holding `x` or one array."""
    import numpy as np

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
    import numpy as np

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


def _read_bundle(bundle_dir, command):
    """The verified manifest, read by the edge package (no TensorFlow)."""
    from keras_slicing_lite import manifest as manifest_lib

    owner = f"keras-slicing {command}"
    manifest = manifest_lib.read_manifest(bundle_dir, owner=owner)
    manifest_lib.verify_files(bundle_dir, manifest, owner=owner)
    return manifest


def _info(bundle_dir):
    _print_manifest(_read_bundle(bundle_dir, "info"))


def _bench(bundle_dir):
    manifest = _read_bundle(bundle_dir, "bench")
    entries = _chosen_entries(manifest, _RATES.value)
    from keras_slicing import interpreter as interpreter_lib

    interpreters = []
    for entry in entries:
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
    for entry, s in zip(entries, seconds):
        rows.append(
            (
                _format_rate(entry["rate"]),
                f"{s * 1e3:.4f}",
                f"{s / seconds[0]:.3f}",
                f"{entry['macs']:,}",
                f"{entry['macs'] / entries[0]['macs']:.3f}",
            )
        )
    _print_table(rows)


def _parsed_rates(texts):
    """`--rates` as floats (None when absent); the library checks the range."""
    if texts is None:
        return None
    try:
        return [float(text) for text in texts]
    except ValueError:
        raise ValueError(
            "--rates must be comma-separated numbers in (0, 1], e.g. "
            f"--rates=1,0.5. Received: --rates={','.join(texts)}"
        ) from None


def _chosen_entries(manifest, rates):
    """The manifest entries of `--rates` (all when None), widest first."""
    entries = manifest["rates"]
    if rates is None:
        return entries
    by_text = {_format_rate(e["rate"]): e for e in entries}
    chosen = []
    for rate in _parsed_rates(rates):
        if _format_rate(rate) not in by_text:
            raise ValueError(
                f"--rates must name rates of the bundle: "
                f"{', '.join(by_text)}. Received: {_format_rate(rate)}"
            )
        chosen.append(by_text[_format_rate(rate)])
    return sorted({id(e): e for e in chosen}.values(), key=lambda e: -e["rate"])


def _format_rate(rate):
    # `keras_slicing.rates.format_rate`, which would import Keras.
    return format(float(rate), "g")


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
                _format_rate(entry["rate"]),
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
