"""How many epochs the networks of slice_pretrained.py need to converge.

Prints one table per data set and writes
benchmarks/results/slice_pretrained_convergence.json (or --output).

    python benchmarks/slice_pretrained_convergence.py [--datasets=mnist1d] [--seeds=3]
    python benchmarks/slice_pretrained_convergence.py --merge=a.json,b.json

For each data set and seed, the two models that slice_pretrained.py compares,
with its networks, batch sizes, optimizer and learning rate (Adam at 3e-3,
constant), seeded the same way:
1. `pretrained`: the plain batch-norm CNN, trained alone;
2. `scratch`: the sliced network (`slice_model` of the untrained plain model)
   trained from scratch with the `SlicingModel` defaults.
Each is trained once for the longest schedule and measured at every
checkpoint epoch (test accuracy; the sliced model's batch-norm statistics are
calibrated first, as `fit` does when it ends). The learning rate is constant,
so the model at a checkpoint is the model a `fit` of that many epochs gives.
The plain model's weights are saved at every checkpoint
(`--checkpoint_dir`): `slice_pretrained.py --convergence=FILE` fine-tunes
the pretrained model of the converged schedule from them, and takes that
schedule's from-scratch accuracies from FILE.

The converged schedule, a rule fixed before any fine-tuning was measured:
the smallest checkpoint E such that no checkpoint up to 2E improves the mean
over seeds by `GAIN` (0.3) points or more, at any width of the sliced model
or for the plain model. A checkpoint without a checkpoint at 2E after it is
no candidate (its next doubling was not measured).
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_slicing  # noqa: E402
from benchmarks import common  # noqa: E402
from benchmarks.accuracy import load  # noqa: E402
from benchmarks.slice_pretrained import (  # noqa: E402
    BATCHES, RATES, _EpochTimes, calibration_seconds, checkpoint_path, compile_model,
    mean_se, plain_accuracy, plain_network, width_accuracy,
)
from keras_slicing.calibration import calibrate_after_fit  # noqa: E402

CHECKPOINTS = {"digits": (10, 15, 20, 30, 40, 60, 80, 120),
               "mnist1d": (10, 15, 20, 30, 40, 60, 80)}
GAIN = 0.3


class _AtEpochs(keras.callbacks.Callback):
    """Calls `measure(epochs)` at the end of every epoch count in `epochs`."""

    def __init__(self, epochs, measure):
        super().__init__()
        self.epochs = set(epochs)
        self.measure = measure

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 in self.epochs:
            self.measure(epoch + 1)


def run_seed(name, seed, checkpoints, args, result, save):
    """Fills `result` checkpoint by checkpoint, calling `save()` after each."""
    x_train, y_train, x_test, y_test = load(name, "test")
    batch = BATCHES[name]
    os.makedirs(args.checkpoint_dir, exist_ok=True)

    keras.utils.set_random_seed(seed)
    plain = plain_network(name)
    compile_model(plain, args.learning_rate)

    def plain_at(epochs):
        result.setdefault("pretrained", {})[str(epochs)] = plain_accuracy(
            plain, x_test, y_test)
        plain.save_weights(checkpoint_path(args.checkpoint_dir, name, seed, epochs))
        print(f"[{name} seed {seed}] pretrained@{epochs}: "
              f"{result['pretrained'][str(epochs)]:.1f}", flush=True)
        save()

    plain.fit(x_train, y_train, batch_size=batch, epochs=max(checkpoints), verbose=0,
              callbacks=[_AtEpochs(checkpoints, plain_at)])

    keras.utils.set_random_seed(seed)
    scratch = keras_slicing.slice_model(plain_network(name), rates=RATES, rewire=None,
                                        seed=seed)
    compile_model(scratch, args.learning_rate)

    def scratch_at(epochs):
        calibrate_after_fit(scratch, x_train, batch, None, None)
        result.setdefault("scratch", {})[str(epochs)] = width_accuracy(
            scratch, x_test, y_test)
        print(f"[{name} seed {seed}] scratch@{epochs}: "
              f"{result['scratch'][str(epochs)]}", flush=True)
        save()

    timer = _EpochTimes()
    scratch.fit(x_train, y_train, batch_size=batch, epochs=max(checkpoints), verbose=0,
                callbacks=[timer, _AtEpochs(checkpoints, scratch_at)])
    result["epoch_seconds"] = float(np.median(timer.times[1:]))
    result["calibration_seconds"] = calibration_seconds(scratch, x_train, batch)
    save()


def converged_epochs(means, checkpoints):
    """The rule of the module docstring: `(epochs or None, largest gains)`.

    `means` maps a model's width key ("pretrained", or a rate of the sliced
    model) to `{epochs: mean accuracy}`; the gains are, per candidate, the
    largest gain of any key at any checkpoint up to twice its epochs.
    """
    gains = {}
    for epochs in checkpoints:
        if 2 * epochs > max(checkpoints):
            break
        later = [e for e in checkpoints if epochs < e <= 2 * epochs]
        # Rounded: accuracies are multiples of a test example's share, and
        # a gain of exactly GAIN must not pass as 0.29999...
        gains[str(epochs)] = round(max(
            values[str(e)] - values[str(epochs)] for values in means.values() for e in later
        ), 6)
    chosen = next((int(e) for e, gain in gains.items() if gain < GAIN), None)
    return chosen, gains


def report(results):
    for name, per_seed in results["runs"].items():
        checkpoints = results["settings"]["checkpoints"][name]
        seeds = sorted(s for s in per_seed if "epoch_seconds" in per_seed[s])
        if not seeds:
            print(f"\n{name}: no seed ran to the end")
            continue
        rows = {"pretrained (plain)": {
            str(e): mean_se([per_seed[s]["pretrained"][str(e)] for s in seeds])
            for e in checkpoints
        }}
        for rate in RATES:
            rows[f"scratch, width {rate:g}"] = {
                str(e): mean_se([per_seed[s]["scratch"][str(e)][str(rate)] for s in seeds])
                for e in checkpoints
            }
        means = {label: {e: v[0] for e, v in row.items()} for label, row in rows.items()}
        chosen, gains = converged_epochs(means, checkpoints)
        results.setdefault("summary", {})[name] = {
            "seeds": seeds, "rows": rows, "largest_gain_within_doubling": gains,
            "converged_epochs": chosen, "rule_gain": GAIN,
        }
        common.print_table(
            f"{name}: test accuracy (%) by epochs trained, mean ± s.e. over seeds {seeds}",
            ["model"] + [str(e) for e in checkpoints],
            [[label] + [f"{row[str(e)][0]:.2f} ± {row[str(e)][1]:.2f}" for e in checkpoints]
             for label, row in rows.items()],
        )
        print("  largest gain up to twice the epochs: " + ", ".join(
            f"{e}: {g:+.2f}" for e, g in gains.items()))
        print(f"  converged schedule (every gain < {GAIN}): {chosen} epochs")
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="mnist1d")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first_seed", type=int, default=0)
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--checkpoint_dir",
                        default=os.path.join(common.RESULTS_DIR, "checkpoints"),
                        help="Where the plain models' weights go (not committed).")
    parser.add_argument("--merge", default=None,
                        help="JSON files to combine (seeds run apart).")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    if args.merge:
        parts = [json.loads(open(p).read()) for p in args.merge.split(",")]
        results = {"machine": parts[0]["machine"], "settings": parts[0]["settings"],
                   "runs": {}}
        for part in parts:
            results["settings"]["checkpoints"].update(part["settings"]["checkpoints"])
            for name, per_seed in part["runs"].items():
                results["runs"].setdefault(name, {}).update(per_seed)
        common.write_json("slice_pretrained_convergence", report(results), args.output)
        return

    results = {
        "machine": {**common.machine_facts(),
                    "note": "2-core machine shared with other jobs; timings "
                            "are indicative"},
        "settings": {"rates": RATES, "batch": BATCHES, "learning_rate": args.learning_rate,
                     "checkpoints": {}, "rule_gain": GAIN},
        "runs": {},
    }
    for name in args.datasets.split(","):
        results["settings"]["checkpoints"][name] = CHECKPOINTS[name]
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            per_seed = results["runs"].setdefault(name, {})
            run_seed(name, seed, CHECKPOINTS[name], args, per_seed.setdefault(str(seed), {}),
                     lambda: common.write_json("slice_pretrained_convergence", results,
                                               args.output))
    common.write_json("slice_pretrained_convergence", report(results), args.output)


if __name__ == "__main__":
    main()
