"""Time to the first training step of converted keras.applications networks.

For MobileNetV2, MobileNetV3Small, ResNet50 and EfficientNetB0 (weights=None,
32x32x3 inputs, 10 classes) converted by `keras_slicing.slice_model` (the
default `"all"` schedule: every rate in every step), on TensorFlow:

- the time from the start of `fit` to the end of its first training step
  (tracing, TensorFlow's graph optimization and the first run), wall clock
  and CPU time of the process, of the sliced model; with `--baseline=DIR`
  (a copy of the package before a change) the same for that code;
- the same for the plain Keras model of trained widths
  (`extract_submodel`; at rate 1 it is the original network): the sum
  over the trained widths is what tracing every width once as plain Keras
  costs, the target of the sliced model. `--widths` picks the widths
  measured (default: all four); with fewer, the target is bounded from
  below by counting each unmeasured width as the nearest measured
  narrower one (a narrower width traces the same ops and runs fewer
  FLOPs), so a sliced time under that bound is under the target;
- the steady step time (median of the later steps) of each;
- the training losses per rate of the first and the last of a few steps on
  one repeated batch: the converted networks train with `fit`.

Each network's sliced model, its baseline and its plain widths run in
processes of their own, one after the other; on a busy machine the CPU
times (of the whole process) are steadier than the wall-clock ones.

    python benchmarks/first_step.py [--names=MobileNetV3Small]
        [--baseline=/path/to/old/checkout] [--widths=1,0.25] [--steps=4]
    python benchmarks/first_step.py --merge a.json b.json  # runs split up
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

NAMES = ("MobileNetV3Small", "MobileNetV2", "ResNet50", "EfficientNetB0")
SHAPE = (32, 32, 3)
RATES = (1.0, 0.75, 0.5, 0.25)


class _Timer:
    """Keras callback: time to the first step's end, then each step's time."""

    def __new__(cls):
        import keras

        class Timer(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.wall = time.perf_counter()
                self.cpu = time.process_time()
                self.first = None
                self.steps = []

            def on_train_batch_begin(self, batch, logs=None):
                self.step_start = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                now = time.perf_counter()
                if self.first is None:
                    self.first = (now - self.wall, time.process_time() - self.cpu)
                else:
                    self.steps.append(now - self.step_start)

        return Timer()


def _train(model, steps, batch):
    """fit on one repeated batch, a step per epoch: timings and losses."""
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.random((batch, *SHAPE)).astype("float32")
    y = rng.integers(0, 10, batch)
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    timer = _Timer()
    kwargs = {}
    if hasattr(model, "rates"):
        kwargs["calibrate_batchnorm"] = False  # not part of a step
    history = model.fit(
        x, y, batch_size=batch, epochs=steps, verbose=0, callbacks=[timer],
        shuffle=False, **kwargs,
    )
    losses = {
        key: [round(values[0], 4), round(values[-1], 4)]
        for key, values in history.history.items()
    }
    return {
        "first_step_wall_s": round(timer.first[0], 2),
        "first_step_cpu_s": round(timer.first[1], 2),
        "steady_step_ms": round(1000 * statistics.median(timer.steps), 1),
        "loss_first_last": losses,
    }


def _network(name):
    import keras

    keras.utils.set_random_seed(0)
    return getattr(keras.applications, name)(
        input_shape=SHAPE, weights=None, classes=10, classifier_activation=None
    )


def measure(name, kind, steps, batch):
    """One process's numbers: `kind` is "sliced" or "widths=1,0.25"."""
    import keras_slicing

    sliced = keras_slicing.slice_model(_network(name))
    if kind == "sliced":
        return {"sliced": _train(sliced, steps, batch)}
    import numpy as np

    rates = [float(r) for r in kind.split("=")[1].split(",")]
    # The narrow widths' batch-norm rows of a converted model wait for
    # calibration; any statistics do for timing.
    images = np.random.default_rng(1).random((batch, *SHAPE)).astype("float32")
    keras_slicing.calibrate_batchnorm(sliced, images, rates=[r for r in rates if r < 1])
    widths = {rate: keras_slicing.extract_submodel(sliced, rate) for rate in rates}
    return {f"width_{rate:g}": _train(width, steps, batch) for rate, width in widths.items()}


def target(entry, key):
    """Sum over the rates of a width's `key`: measured, else a lower bound."""
    measured = sorted(
        (float(k.split("_")[1]), v[key]) for k, v in entry.items()
        if k.startswith("width_")
    )
    total = 0.0
    for rate in RATES:
        narrower = [v for r, v in measured if r <= rate + 1e-9]
        total += narrower[-1] if narrower else 0.0
    return round(total, 2)


def _run(name, kind, args, code=None):
    root = code or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.path.join(root, "tflite")]))
    here = os.path.abspath(__file__)
    command = [
        sys.executable, here, "--one", name, kind,
        f"--steps={args.steps}", f"--batch={args.batch}",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stderr[-3000:])
        raise RuntimeError(f"{name} {kind} failed")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _row(name, entry):
    target_cpu = entry["target_cpu_s"] = target(entry, "first_step_cpu_s")
    target_wall = entry["target_wall_s"] = target(entry, "first_step_wall_s")
    entry["target_is_lower_bound"] = any(f"width_{r:g}" not in entry for r in RATES)
    sliced, plain = entry["sliced"], entry["width_1"]
    entry["sliced_cpu_over_target"] = round(sliced["first_step_cpu_s"] / target_cpu, 2)
    before = entry.get("before")
    if before:
        entry["before_cpu_over_target"] = round(
            before["first_step_cpu_s"] / target_cpu, 2
        )
    return [
        name,
        before["first_step_cpu_s"] if before else "-",
        sliced["first_step_cpu_s"],
        plain["first_step_cpu_s"],
        target_cpu if not entry["target_is_lower_bound"] else f">={target_cpu}",
        entry["sliced_cpu_over_target"],
        before["first_step_wall_s"] if before else "-",
        sliced["first_step_wall_s"],
        plain["first_step_wall_s"],
        sliced["steady_step_ms"],
        plain["steady_step_ms"],
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", default=",".join(NAMES))
    parser.add_argument("--baseline", default=None,
                        help="a copy of the package's code before a change")
    parser.add_argument("--baseline_names", default=",".join(NAMES),
                        help="the networks to measure the baseline of")
    parser.add_argument("--parts", default="sliced,widths",
                        help="sliced and/or widths: what to measure besides the baseline")
    parser.add_argument("--widths", default=",".join(f"{r:g}" for r in RATES))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--output", default=None)
    parser.add_argument("--merge", nargs="+", default=None,
                        help="result files of runs split up, joined into one")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # name, kind
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one, args.steps, args.batch)))
        return
    from benchmarks import common

    if args.merge:
        parts = [json.loads(open(path).read()) for path in args.merge]
        payload = dict(parts[0], networks={}, baseline=None)
        for part in parts:
            for name, entry in part["networks"].items():
                payload["networks"].setdefault(name, {}).update(entry)
            payload["baseline"] = payload["baseline"] or part["baseline"]
        for name, entry in payload["networks"].items():
            if "sliced" in entry and "width_1" in entry:
                _row(name, entry)
        common.write_json("first_step", payload, args.output)
        _print(payload)
        return

    payload = {
        "machine": common.machine_facts(),
        "note": (
            "2-core machine shared with other work while measuring: wall "
            "times vary with the load, CPU times (of the whole process, "
            "all threads) much less. The target is the sum over the trained "
            "widths of the plain extracted model's first step (a lower bound "
            "of it where target_is_lower_bound, see the script)."
        ),
        "batch": args.batch,
        "steps": args.steps,
        "rates": list(RATES),
        "baseline": args.baseline,
        "networks": {},
    }
    parts = args.parts.split(",")
    for name in args.names.split(","):
        entry = payload["networks"][name] = {}
        if "sliced" in parts:
            entry.update(_run(name, "sliced", args))
            common.write_json("first_step", payload, args.output)  # partial
        if args.baseline and name in args.baseline_names.split(","):
            entry["before"] = _run(name, "sliced", args, code=args.baseline)["sliced"]
            common.write_json("first_step", payload, args.output)
        if "widths" in parts:
            entry.update(_run(name, f"widths={args.widths}", args))
            common.write_json("first_step", payload, args.output)
        print(name, json.dumps(entry), flush=True)
    if parts == ["sliced", "widths"]:
        _print(payload)


def _print(payload):
    from benchmarks import common

    rows = [
        _row(name, entry) for name, entry in payload["networks"].items()
        if "sliced" in entry and "width_1" in entry
    ]
    common.print_table(
        f"Time to the end of the first training step (batch {payload['batch']}, "
        "CPU seconds of the process; wall seconds; steady step ms)",
        ["network", "before cpu", "sliced cpu", "plain cpu", "target cpu",
         "sliced/target", "before wall", "sliced wall", "plain wall",
         "sliced step ms", "plain step ms"],
        rows,
    )


if __name__ == "__main__":
    main()
