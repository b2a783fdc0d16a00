"""Why DenseNet121's exported 0.75 width timed 9% slower than the native one.

`applications_latency.py` timed DenseNet121's sliced 0.75 width at 1.095
and 1.088 times the native narrow model in two runs, its full width at 0.918
and 1.091, although the two files hold the same operators on the same
shapes. This script builds the same files (same seeds, same functions) and
tests the explanations one at a time:

1. Denormal floats: every intermediate tensor of every file on the
   benchmark's input (LiteRT reference kernels, all tensors kept), counted
   for values with 0 < |x| < the smallest normal float32, and for values
   below 1e-30; the same for the weights.
2. Weight values, input values, the interpreter instance: in one process,
   interleaved, the sliced and native 0.75 files against a second
   interpreter of each same file, the native architecture with the sliced
   weights, the sliced file's graph with random weights, and both files on
   inputs scaled like the images the batch norms were calibrated on
   (0-255 instead of 0-1). Each arm against the native file, round by round.
3. The timing order: the benchmark's own timing (its eight files in its
   order, `model_content`, 41 rounds of 0.05 s, thread CPU time) in fresh
   processes, repeated; alternately the same with sliced and native swapped
   in the order, and with every native file replaced by the sliced file of
   its width (identical files: the ratio's true value is 1). Each with the
   rounds of `latency_rounds` (a fresh random order per round, one untimed
   call before each timing) and with the rounds the benchmark had before
   (the list's order, reversed every other round, no untimed call).
4. The cache: the first call of a file after other files' calls against
   the calls after it.

    python benchmarks/densenet_latency_cause.py [--replicates=4]
        [--rounds=101] [--files_dir=DIR]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402

NAME = "DenseNet121"
RATES = (1.0, 0.75, 0.5, 0.25)
RATE = 0.75
# The benchmark's timing: its rounds, seconds per timing and clock.
BENCHMARK_ROUNDS = 41
MIN_SECONDS = 0.05
SCHEMES = ("shuffled", "alternating")
ARMS = {
    "benchmark order": [(kind, rate) for rate in RATES for kind in ("sliced", "native")],
    "kinds swapped": [(kind, rate) for rate in RATES for kind in ("native", "sliced")],
    "identical files": [(kind, rate) for rate in RATES for kind in ("sliced", "sliced copy")],
}


def build(files_dir):
    """Writes the benchmark's files and the weight-swapped 0.75 variants.

    The files `applications_latency.py` timed for DenseNet121 in
    `applications_latency.json`: the original keeps its fresh weights.
    """
    import keras

    import keras_slicing
    from benchmarks import applications_latency as bench
    from keras_slicing.export import convert_to_tflite

    keras.utils.set_random_seed(0)
    plain = getattr(keras.applications, NAME)(
        input_shape=bench.SHAPE, weights=None, classes=10
    )
    sliced = keras_slicing.slice_model(plain)
    keras_slicing.calibrate_batchnorm(
        sliced, bench.images(16, bench.SHAPE), rates=bench.RATES
    )

    def save(name, rate, model):
        with open(file_path(files_dir, name, rate), "wb") as f:
            f.write(convert_to_tflite(model))

    for rate in RATES:
        # `export_tflite` converts `extract_submodel`'s model the same way.
        extracted = keras_slicing.extract_submodel(sliced, rate)
        native = bench.native_model(plain, sliced.slicing_plan, rate)
        save("sliced", rate, extracted)
        save("native", rate, native)
        if rate != RATE:
            continue
        # Same layer names, same shapes (the benchmark checks them).
        theirs = {layer.name: layer for layer in extracted.layers}
        for layer in native.layers:
            if layer.weights:
                layer.set_weights(theirs[layer.name].get_weights())
        save("native with sliced weights", rate, native)
        save("sliced with random weights", rate, bench.randomize(extracted))


def file_path(files_dir, name, rate):
    if name == "sliced copy":
        name = "sliced"
    return os.path.join(files_dir, f"{name.replace(' ', '_')}_{rate}.tflite")


def count_small_values(path):
    """Denormal and tiny values in every tensor of one file, on its input."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_litert.interpreter import OpResolverType

    from keras_slicing import interpreter as interpreter_lib

    # XNNPACK keeps intermediate results to itself: the reference kernels
    # compute the same values and keep every tensor.
    interpreter = Interpreter(
        model_path=path, num_threads=1,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        experimental_preserve_all_tensors=True,
    )
    interpreter_lib.set_random_input(interpreter, 1)
    interpreter.invoke()
    computed = {i for op in interpreter._get_ops_details() for i in op["outputs"]}
    smallest_normal = np.finfo(np.float32).tiny
    counts = {f"{part}_{what}": 0 for part in ("activations", "weights")
              for what in ("values", "denormal", "below_1e-30", "zero")}
    for detail in interpreter.get_tensor_details():
        if detail["dtype"] != np.float32:
            continue
        values = np.abs(interpreter.get_tensor(detail["index"]))
        part = "activations" if detail["index"] in computed else "weights"
        counts[f"{part}_values"] += values.size
        counts[f"{part}_denormal"] += int(((values > 0) & (values < smallest_normal)).sum())
        counts[f"{part}_below_1e-30"] += int(((values > 0) & (values < 1e-30)).sum())
        counts[f"{part}_zero"] += int((values == 0).sum())
    return counts


def alternating_rounds(interpreters, repeats, min_seconds, clock):
    """The rounds `latency_rounds` ran before: the list's order, reversed
    every other round, the first call after another model timed."""
    from keras_slicing import interpreter as interpreter_lib

    numbers = []
    for interpreter in interpreters:
        for _ in range(3):
            interpreter.invoke()
        single = interpreter_lib.time_invoke(interpreter, 5, clock)
        numbers.append(max(1, int(min_seconds / max(single, 1e-7))))
    rounds = [[] for _ in interpreters]
    order = list(range(len(interpreters)))
    for repeat in range(repeats):
        for i in order if repeat % 2 == 0 else reversed(order):
            rounds[i].append(interpreter_lib.time_invoke(interpreters[i], numbers[i], clock))
    return rounds


def time_files(files_dir, entries, rounds, seed=None, scheme="shuffled"):
    """Per-round seconds of each `(label, file name, rate, input scale)`.

    Loaded from bytes and timed as the benchmark times them; `seed` shuffles
    the order of the interpreters in the rounds.
    """
    from keras_slicing import interpreter as interpreter_lib

    if seed is not None:
        entries = [entries[i] for i in np.random.default_rng(seed).permutation(len(entries))]
    interpreters = []
    for _, name, rate, scale in entries:
        with open(file_path(files_dir, name, rate), "rb") as f:
            interpreter = interpreter_lib.load_interpreter(
                model_content=f.read(), num_threads=1
            )
        interpreter_lib.set_random_input(interpreter, 1)
        if scale != 1:
            (detail,) = interpreter.get_input_details()
            interpreter.set_tensor(
                detail["index"], interpreter.get_tensor(detail["index"]) * scale
            )
        interpreters.append(interpreter)
    timer = {"shuffled": interpreter_lib.latency_rounds,
             "alternating": alternating_rounds}[scheme]
    times = timer(interpreters, rounds, MIN_SECONDS, clock=time.thread_time)
    return {label: seconds for (label, *_), seconds in zip(entries, times)}


def in_child(files_dir, entries, rounds, seed=None, scheme="shuffled"):
    """`time_files` in a fresh process, as the benchmark's timing is one."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.densenet_latency_cause", "--child",
         json.dumps({"files_dir": files_dir, "entries": entries,
                     "rounds": rounds, "seed": seed, "scheme": scheme})],
        capture_output=True, text=True, check=False,
    )
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def one_process_arms(files_dir, rounds, processes):
    """Part 2: every 0.75 variant against the native file, pooled rounds."""
    entries = [
        ["native", "native", RATE, 1],
        ["native, second interpreter", "native", RATE, 1],
        ["sliced", "sliced", RATE, 1],
        ["sliced, second interpreter", "sliced", RATE, 1],
        ["native with sliced weights", "native with sliced weights", RATE, 1],
        ["sliced with random weights", "sliced with random weights", RATE, 1],
        ["native, input x255", "native", RATE, 255],
        ["sliced, input x255", "sliced", RATE, 255],
    ]
    ratios = {label: [] for label, *_ in entries}
    per_process = {label: [] for label, *_ in entries}
    milliseconds = {label: [] for label, *_ in entries}
    for seed in range(processes):
        times = {k: np.asarray(v) for k, v in in_child(files_dir, entries, rounds, seed).items()}
        for label in ratios:
            ratio = times[label] / times["native"]
            ratios[label].extend(ratio.tolist())
            per_process[label].append(float(np.median(ratio)))
            milliseconds[label].extend((times[label] * 1e3).tolist())
    return {
        label: {
            "ms": float(np.median(milliseconds[label])),
            "ratio_to_native": float(np.median(ratios[label])),
            "ratio_quartiles": [float(q) for q in np.quantile(ratios[label], [0.25, 0.75])],
            "ratio_per_process": per_process[label],
        }
        for label in ratios
    }


def replicate_runs(files_dir, replicates):
    """Part 3: the benchmark's timing in fresh processes, per arm and rounds."""
    runs = {f"{arm}, {scheme}": [] for scheme in SCHEMES for arm in ARMS}
    for _ in range(replicates):
        for scheme in SCHEMES:
            for arm, keys in ARMS.items():
                entries = [[f"{kind} {rate}", kind, rate, 1] for kind, rate in keys]
                times = {k: np.asarray(v) for k, v in in_child(
                    files_dir, entries, BENCHMARK_ROUNDS, scheme=scheme).items()}
                second = "sliced copy" if arm == "identical files" else "native"
                run = {
                    str(rate): float(np.median(times[f"sliced {rate}"] / times[f"{second} {rate}"]))
                    for rate in RATES
                }
                runs[f"{arm}, {scheme}"].append(run)
                print(arm, scheme, {k: round(v, 3) for k, v in run.items()}, flush=True)
    summary = {}
    for arm, per_run in runs.items():
        summary[arm] = {}
        for rate in RATES:
            values = np.asarray([run[str(rate)] for run in per_run])
            summary[arm][str(rate)] = {
                "median": float(np.median(values)),
                "min": float(values.min()),
                "max": float(values.max()),
                "runs_outside_target": int((np.abs(values - 1) > 0.05).sum()),
            }
    return {"runs": runs, "summary": summary}


def first_calls(files_dir, repeats=30):
    """Part 4: ms of the first call of a file after 5 calls of another one,
    and of its 9 calls after that (medians)."""
    from keras_slicing import interpreter as interpreter_lib

    pairs = [(("sliced", 1.0), ("native", 1.0)), (("sliced", RATE), ("native", 1.0)),
             (("native", RATE), ("sliced", RATE)), (("native", RATE), ("sliced", 0.25))]
    interpreters = {}
    for key in {key for pair in pairs for key in pair}:
        interpreter = interpreter_lib.load_interpreter(
            model_path=file_path(files_dir, *key), num_threads=1
        )
        interpreter_lib.set_random_input(interpreter, 1)
        interpreters[key] = interpreter
    results = {}
    for target, other in pairs:
        first, later = [], []
        for _ in range(repeats):
            for _ in range(5):
                interpreters[other].invoke()
            for call in range(10):
                seconds = interpreter_lib.time_invoke(interpreters[target], 1, time.thread_time)
                (later if call else first).append(seconds * 1e3)
        results[f"{target[0]} {target[1]} after {other[0]} {other[1]}"] = {
            "first_ms": float(np.median(first)), "later_ms": float(np.median(later)),
            "first_over_later": float(np.median(first) / np.median(later)),
        }
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=101)
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument(
        "--files_dir", default=None,
        help="Keep the converted files here; files already there are reused.",
    )
    parser.add_argument("--output", default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        task = json.loads(args.child)
        times = time_files(
            task["files_dir"], task["entries"], task["rounds"], task["seed"], task["scheme"]
        )
        print(json.dumps(times))
        return
    import ai_edge_litert

    with tempfile.TemporaryDirectory() as scratch:
        files_dir = args.files_dir or scratch
        os.makedirs(files_dir, exist_ok=True)
        files = "reused from --files_dir, converted by build() in an earlier run"
        if not os.path.exists(file_path(files_dir, "sliced with random weights", RATE)):
            start = time.perf_counter()
            build(files_dir)
            print(f"built the files in {time.perf_counter() - start:.0f} s", flush=True)
            files = "converted by build() in this run"
        names = ["sliced", "native", "native with sliced weights", "sliced with random weights"]
        small_values = {
            f"{name} {rate}": count_small_values(file_path(files_dir, name, rate))
            for rate in (1.0, RATE) for name in names
            if os.path.exists(file_path(files_dir, name, rate))
        }
        arms = one_process_arms(files_dir, args.rounds, args.processes)
        replicates = replicate_runs(files_dir, args.replicates)
        cache = first_calls(files_dir)

    common.print_table(
        f"{NAME}: denormal and tiny values on the benchmark's input (all tensors)",
        ["file", "activations", "denormal", "< 1e-30", "zero", "weights", "denormal"],
        [[name, f"{c['activations_values']:,}", c["activations_denormal"],
          c["activations_below_1e-30"], f"{c['activations_zero']:,}",
          f"{c['weights_values']:,}", c["weights_denormal"]]
         for name, c in small_values.items()],
    )
    common.print_table(
        f"{NAME} {RATE}: each interpreter against the native file, interleaved in "
        f"one process ({args.processes} processes x {args.rounds} rounds, thread CPU time)",
        ["interpreter", "ms", "ratio", "quartiles", "per process"],
        [[label, f"{a['ms']:.3f}", f"{a['ratio_to_native']:.3f}",
          "{:.3f}-{:.3f}".format(*a["ratio_quartiles"]),
          " ".join(f"{r:.3f}" for r in a["ratio_per_process"])]
         for label, a in arms.items()],
    )
    common.print_table(
        f"{NAME}: sliced / native per width, the benchmark's timing in "
        f"{args.replicates} fresh processes per arm and rounds",
        ["arm", "rate", "median of runs", "lowest run", "highest run", "runs outside 1.00+-0.05"],
        [[arm, rate, f"{s['median']:.3f}", f"{s['min']:.3f}", f"{s['max']:.3f}",
          s["runs_outside_target"]]
         for arm, per_rate in replicates["summary"].items() for rate, s in per_rate.items()],
    )
    common.print_table(
        f"{NAME}: the first call after other files (ms, thread CPU time, medians)",
        ["call", "first", "later", "first / later"],
        [[name, f"{c['first_ms']:.3f}", f"{c['later_ms']:.3f}",
          f"{c['first_over_later']:.2f}"] for name, c in cache.items()],
    )
    payload = {
        "machine": {
            **common.machine_facts(),
            "litert": getattr(ai_edge_litert, "__version__", "unknown"),
            "litert_threads": 1,
            "note": "shared 2-core machine (other jobs running); thread CPU time",
        },
        "settings": {
            "network": NAME, "rate": RATE, "files": files, "rounds_one_process": args.rounds,
            "processes_one_process": args.processes, "replicates": args.replicates,
            "benchmark_rounds": BENCHMARK_ROUNDS, "min_seconds_per_timing": MIN_SECONDS,
            "input": "set_random_input (uniform 0-1), as the benchmark; 'x255' "
                     "arms scale it to the 0-255 range of the calibration images",
        },
        "small_values": small_values,
        "one_process": arms,
        "replicates": replicates,
        "first_calls": cache,
    }
    common.write_json("applications_latency_densenet_cause", payload, args.output)


if __name__ == "__main__":
    main()
