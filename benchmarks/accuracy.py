"""One sliced model against a plain model trained alone at each width.

Prints one table per data set and writes benchmarks/results/accuracy.json
(or --output).

    python benchmarks/accuracy.py [--datasets=digits,mnist1d] [--seeds=5]
        [--kinds=alone,recipe,random_min_max] [--split=test]
    python benchmarks/accuracy.py --merge=a.json,b.json   # seeds run apart
    python benchmarks/accuracy.py --datasets=digits --epochs=100 \
        --seeds=10 --output=benchmarks/results/accuracy_digits_100.json

Digits' 25 epochs (the default) leave every model short of convergence
(the 0.25-width model trained alone ends at 86% training accuracy);
`--epochs=100` compares models that have fit their training data (98%).

Data (offline): scikit-learn's 8x8 digits, a stratified 75/25 split with
seed 0; MNIST-1D from the `mnist1d` generator (4,000 train / 1,000 test
signals of 40 steps). Networks: conv32-GN-conv64-GN-GAP-dense on digits;
conv32/2-GN-conv64/2-GN-conv64/2-GN-flatten-dense on MNIST-1D (GN: 8 groups,
aligned with the 8 slice groups). Every model: Adam 3e-3, batch 64, the same
epochs, cross-entropy on logits.

Kinds of model, each trained once per seed:
- `alone`: a plain Keras model of each width (the same network with `r`
  times the channels and groups), trained by itself.
- `recipe`: `SlicingModel(inputs, outputs, rates=RATES)` with nothing else
  set: the library's defaults.
- `random_min_max`: the paper's schedule (widest, narrowest and one random
  rate per step, per-rate losses summed evenly), for reference.
- `all`, `all_inplace`, `random_min_max_inplace`: the `"all"` schedule and
  in-place distillation with an even sum, to show their effect per width.

`--slicing_kwargs` adds SlicingModel arguments to the sliced kinds: screening
a recipe is `--kinds=recipe --split=folds --slicing_kwargs='{...}'`.

`--split=folds` is 5-fold stratified cross-validation of the training split:
seed `s` trains on four folds and reports fold `s mod 5`, so five seeds
report every training example once and the split's luck averages out;
defaults are chosen there, never on the test split. `--split=validation`
(80% / 20% of the training split, one split for every seed) is the earlier,
noisier protocol, kept to reproduce `benchmarks/results/screen/val_*.json`.

Beside each difference to the models trained alone is its standard error:
of the per-seed differences when both ran the same seeds (paired: same
split, same seed), else of two independent means.

A second table gives the training accuracy of the last epoch, as `fit`
logs it (the mean over that epoch's steps): how far from fitting its
training data each model got.

The cost column is the expected training cost of one step in full-width
passes: the multiply-accumulates of the rates a step runs (forward and
backward scale alike) over those of the full width; for `alone` it is the
sum over the widths, the cost of training every width separately for the
same number of steps.
"""

import functools
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from sklearn.model_selection import StratifiedKFold  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from benchmarks import common  # noqa: E402
from keras_slicing import SlicingModel  # noqa: E402
from keras_slicing import layers  # noqa: E402
from keras_slicing import model_cost  # noqa: E402
from keras_slicing import rate_input  # noqa: E402
from keras_slicing import schedulers  # noqa: E402

RATES = (1.0, 0.75, 0.5, 0.25)
GROUPS = 8
FOLDS = 5
EVEN = {"rate_loss_weights": [1.0] * len(RATES)}  # the defaults weigh narrow more
KINDS = {
    "alone": None,
    "recipe": {},
    "random_min_max": {"scheduler": "random_min_max", "num_random": 1, **EVEN},
    "all": {"scheduler": "all", **EVEN},
    "all_inplace": {"scheduler": "all", "distillation": "inplace", **EVEN},
    "random_min_max_inplace": {
        "scheduler": "random_min_max", "num_random": 1, "distillation": "inplace",
        **EVEN,
    },
}
EPOCHS = {"digits": 25, "mnist1d": 15}

flags.DEFINE_list("datasets", ["digits", "mnist1d"], "Data sets to run.")
flags.DEFINE_list("kinds", ["alone", "recipe", "random_min_max"],
                  f"Models to train, of {list(KINDS)}.")
flags.DEFINE_integer("seeds", 5, "Number of seeds (weights, shuffling, rates).")
flags.DEFINE_integer("first_seed", 0, "First seed, to split runs over processes.")
flags.DEFINE_integer("epochs", 0, "Epochs of every model (0: 25 digits, 15 MNIST-1D).")
flags.DEFINE_integer("batch", 64, "Batch size.")
flags.DEFINE_float("learning_rate", 3e-3, "Adam learning rate.")
flags.DEFINE_enum("split", "test", ["test", "folds", "validation"],
                  "Report the test split, a cross-validation fold of the "
                  "training split (seed mod 5), or one 20% of it.")
flags.DEFINE_string("slicing_kwargs", None,
                    "JSON of extra SlicingModel arguments for the sliced kinds.")
flags.DEFINE_list("merge", None, "JSON files of earlier runs to combine.")
flags.DEFINE_string("output", None, "JSON path (default benchmarks/results/).")
FLAGS = flags.FLAGS


# ------------------------------------------------------------------ data


def load(name, split, seed=0):
    """`(x_train, y_train, x_eval, y_eval)` of a data set (fold `seed % 5`)."""
    x_train, y_train, x_eval, y_eval = _train_test(name)
    if split == "validation":
        x_train, x_eval, y_train, y_eval = train_test_split(
            x_train, y_train, test_size=0.2, stratify=y_train, random_state=0
        )
    elif split == "folds":
        folds = StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=0)
        train, held_out = list(folds.split(x_train, y_train))[seed % FOLDS]
        x_train, x_eval = x_train[train], x_train[held_out]
        y_train, y_eval = y_train[train], y_train[held_out]
    return x_train, y_train, x_eval, y_eval


@functools.lru_cache(maxsize=None)
def _train_test(name):
    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = (digits.images / 16.0).astype("float32")[..., None]
        x_train, x_eval, y_train, y_eval = train_test_split(
            x, digits.target, test_size=0.25, stratify=digits.target,
            random_state=0,
        )
    elif name == "mnist1d":
        from mnist1d.data import get_dataset_args
        from mnist1d.data import make_dataset

        data = make_dataset(get_dataset_args())  # generated here, offline
        x_train = data["x"].astype("float32")[..., None]
        x_eval = data["x_test"].astype("float32")[..., None]
        y_train, y_eval = data["y"], data["y_test"]
    else:
        raise ValueError(f"Unknown data set {name!r}: digits or mnist1d.")
    return x_train, y_train, x_eval, y_eval


# ---------------------------------------------------------------- models


def network(name, rate=None):
    """The data set's network: sliced when `rate` is None, else plain at `rate`.

    The plain model keeps `round(rate * 8)` of the 8 slice groups of every
    layer, exactly the widths the sliced model computes at `rate`.
    """
    sliced = rate is None
    kept = GROUPS if sliced else round(rate * GROUPS)
    r = rate_input() if sliced else None

    def conv(h, filters, kernel, first=False, **kwargs):
        if sliced:
            cls = layers.SlicedConv2D if name == "digits" else layers.SlicedConv1D
            return cls(filters, kernel, slice_input=not first, **kwargs)(h, r)
        cls = keras.layers.Conv2D if name == "digits" else keras.layers.Conv1D
        return cls(filters * kept // GROUPS, kernel, **kwargs)(h)

    def norm(h):
        if sliced:
            return layers.SlicedGroupNormalization(groups=GROUPS)(h, r)
        return keras.layers.GroupNormalization(groups=kept)(h)

    if name == "digits":
        x = keras.Input((8, 8, 1))
        h = x
        for i, filters in enumerate((32, 64)):
            h = keras.layers.ReLU()(norm(conv(h, filters, 3, i == 0, padding="same")))
        h = keras.layers.GlobalAveragePooling2D()(h)
    else:
        x = keras.Input((40, 1))
        h = x
        for i, filters in enumerate((32, 64, 64)):
            h = conv(h, filters, 5 if i == 0 else 3, i == 0, strides=2,
                     padding="same")
            h = keras.layers.ReLU()(norm(h))
        h = layers.SlicedFlatten()(h) if sliced else _channels_first_flatten(h)
    if sliced:
        y = layers.SlicedDense(10, slice_output=False)(h, r)
        return [x, r], y
    return keras.Model(x, keras.layers.Dense(10)(h))


def _channels_first_flatten(h):
    # The feature order of SlicedFlatten; for a model trained alone the
    # order does not matter, but it keeps the two networks identical.
    return keras.layers.Flatten()(keras.layers.Permute((2, 1))(h))


def train(model, data, epochs):
    x_train, y_train, _, _ = data
    model.compile(
        keras.optimizers.Adam(FLAGS.learning_rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = model.fit(x_train, y_train, batch_size=FLAGS.batch, epochs=epochs,
                        verbose=0)
    return history.history


def step_cost(name, kwargs):
    """Expected MACs of one training step over those of one full-width pass."""
    inputs, outputs = network(name)
    if kwargs is None:
        model = keras.Model(inputs, outputs)
        macs = [model_cost(model, r)["macs"] for r in RATES]
        return sum(macs) / macs[0]
    model = SlicingModel(inputs, outputs, rates=RATES, **kwargs)
    macs = [model_cost(model, r)["macs"] for r in model.rates]
    return float(np.dot(run_probabilities(model), macs) / macs[0])


def run_probabilities(model):
    """Probability that a step runs each of `model.rates`."""
    scheduler, count = model.scheduler, len(model.rates)
    if isinstance(scheduler, schedulers.AllScheduler):
        return np.ones(count)
    if isinstance(scheduler, schedulers.RandomScheduler) and (
        scheduler.probabilities is None
    ):
        fixed = scheduler._fixed(model.rates)
        others = count - len(fixed)
        share = scheduler.num_random / others if others else 0.0
        return np.array([1.0 if i in fixed else share for i in range(count)])
    seed = keras.random.SeedGenerator(0)
    drawn = np.zeros(count)
    for _ in range(2000):
        drawn[np.unique(keras.ops.convert_to_numpy(
            scheduler.sample(model.rates, seed)))] += 1
    return drawn / 2000


# ------------------------------------------------------------------ runs


def run(name, kinds, seeds):
    epochs = FLAGS.epochs or EPOCHS[name]
    extra = json.loads(FLAGS.slicing_kwargs) if FLAGS.slicing_kwargs else {}
    accuracy = {kind: {str(r): [] for r in RATES} for kind in kinds}
    fit_accuracy = {kind: {str(r): [] for r in RATES} for kind in kinds}
    started = time.perf_counter()
    for seed in seeds:
        data = load(name, FLAGS.split, seed)
        for kind in kinds:
            if KINDS[kind] is None:
                for rate in RATES:
                    keras.utils.set_random_seed(seed)
                    model = network(name, rate)
                    logs = train(model, data, epochs)
                    result = model.evaluate(data[2], data[3], verbose=0)
                    accuracy[kind][str(rate)].append(float(result[1]))
                    fit_accuracy[kind][str(rate)].append(logs["accuracy"][-1])
                continue
            keras.utils.set_random_seed(seed)
            inputs, outputs = network(name)
            model = SlicingModel(inputs, outputs, rates=RATES, seed=seed,
                                 **KINDS[kind], **extra)
            logs = train(model, data, epochs)
            for rate, result in model.evaluate_rates(data[2], data[3]).items():
                accuracy[kind][str(rate)].append(float(result["accuracy"]))
                fit_accuracy[kind][str(rate)].append(
                    logs[f"accuracy@{rate:g}"][-1])
        print(f"{name} seed {seed} done, {time.perf_counter() - started:.0f} s",
              flush=True)
    extra_kinds = {k: {**KINDS[k], **extra} for k in kinds if KINDS[k] is not None}
    return {
        "seeds": {kind: list(seeds) for kind in kinds},
        "epochs": epochs,
        "train_examples": len(data[0]),
        "eval_examples": len(data[2]),
        "kinds": {k: extra_kinds.get(k) for k in kinds},
        "accuracy": accuracy,
        "fit_accuracy": fit_accuracy,
        "step_cost": {k: step_cost(name, extra_kinds.get(k)) for k in kinds},
        "seconds": time.perf_counter() - started,
    }


def merge(results):
    """Combines runs of other seeds into the first (same data sets, kinds)."""
    splits = {r["split"] for r in results}
    if len(splits) > 1:
        raise app.UsageError(f"--merge: runs of different splits {sorted(splits)}")
    merged = json.loads(json.dumps(results[0]))
    for per_set in merged["datasets"].values():
        per_set["seeds"] = {k: _seeds(per_set, k) for k in per_set["accuracy"]}
        per_set.setdefault("fit_accuracy", {})
    for other in results[1:]:
        for name, per_set in other["datasets"].items():
            target = merged["datasets"].setdefault(name, per_set)
            if target is per_set:
                continue
            for kind, per_rate in per_set["accuracy"].items():
                target["seeds"][kind] = (target["seeds"].get(kind, [])
                                         + _seeds(per_set, kind))
                fit = target["fit_accuracy"]
                theirs = per_set.get("fit_accuracy", {}).get(kind)
                if kind not in target["accuracy"]:
                    target["accuracy"][kind] = per_rate
                    target["kinds"][kind] = per_set["kinds"][kind]
                    target["step_cost"][kind] = per_set["step_cost"][kind]
                    if theirs:
                        fit[kind] = theirs
                    continue
                for rate, values in per_rate.items():
                    target["accuracy"][kind][rate] += values
                if kind in fit and theirs:
                    for rate, values in theirs.items():
                        fit[kind][rate] += values
                else:  # a run from before it was recorded: no complete list
                    fit.pop(kind, None)
            target["seconds"] += per_set["seconds"]
    return merged


def report(results):
    for name, per_set in results["datasets"].items():
        kinds = [k for k in KINDS if k in per_set["accuracy"]]
        stats = {
            kind: {rate: summary(values) for rate, values in per_rate.items()}
            for kind, per_rate in per_set["accuracy"].items()
        }
        per_set["mean_std"] = stats
        counts = {k: len(per_set["accuracy"][k][str(RATES[0])]) for k in kinds}
        seeds = (
            f"{counts[kinds[0]]} seeds"
            if len(set(counts.values())) == 1
            else "seeds " + ", ".join(f"{k} {n}" for k, n in counts.items())
        )
        rows = []
        for rate in map(str, RATES):
            row = [f"{float(rate):g}"]
            for kind in kinds:
                mean, std = stats[kind][rate]
                row.append(f"{100 * mean:.1f} ± {100 * std:.1f}")
            if "alone" in kinds:
                row += [difference(per_set["accuracy"][k][rate],
                                   per_set["accuracy"]["alone"][rate],
                                   paired=_same_seeds(per_set, k, "alone"))
                        for k in kinds if k != "alone"]
            rows.append(row)
        rows.append(["cost"] + [f"{per_set['step_cost'][k]:.2f}" for k in kinds]
                    + ["" for k in kinds if k != "alone" and "alone" in kinds])
        header = ["width", *kinds]
        if "alone" in kinds:
            header += [f"{k} - alone (± s.e.)" for k in kinds if k != "alone"]
        common.print_table(
            f"{results['split']} accuracy (%) on {name}, {per_set['epochs']} "
            f"epochs, {seeds} (mean ± sample std; cost: full-width "
            "passes per training step)",
            header, rows,
        )
        fit = per_set.get("fit_accuracy", {})
        if all(k in fit for k in kinds):
            common.print_table(
                f"training accuracy (%) of the last epoch on {name}, as fit "
                "logs it (mean ± sample std)",
                ["width", *kinds],
                [[f"{r:g}"] + ["{:.1f} ± {:.1f}".format(
                    *(100 * v for v in summary(fit[k][str(r)]))) for k in kinds]
                 for r in RATES],
            )


def difference(values, alone, paired=False):
    """Mean difference in points, ± its standard error.

    Paired runs (the same seeds, so the same splits) give the standard error
    of the per-seed differences; otherwise that of two independent means.
    """
    values, alone = np.asarray(values, float), np.asarray(alone, float)
    if paired and len(values) > 1:
        variance = (values - alone).var(ddof=1) / len(values)
    else:
        variance = sum(v.var(ddof=1) / len(v) for v in (values, alone)
                       if len(v) > 1)
    return f"{100 * (values.mean() - alone.mean()):+.1f} ± {100 * np.sqrt(variance):.1f}"


def _seeds(per_set, kind):
    # Runs from before the seeds were recorded count as unknown seeds.
    count = len(per_set["accuracy"][kind][str(RATES[0])])
    return per_set.get("seeds", {}).get(kind) or [None] * count


def _same_seeds(per_set, kind, other):
    mine = _seeds(per_set, kind)
    return None not in mine and mine == _seeds(per_set, other)


def summary(values):
    values = np.asarray(values, dtype=float)
    std = values.std(ddof=1) if len(values) > 1 else 0.0
    return float(values.mean()), float(std)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.merge:
        results = merge([json.loads(open(p).read()) for p in FLAGS.merge])
    else:
        unknown = sorted(set(FLAGS.kinds) - set(KINDS))
        if unknown:
            raise app.UsageError(f"--kinds: unknown {unknown}; known: {list(KINDS)}")
        seeds = range(FLAGS.first_seed, FLAGS.first_seed + FLAGS.seeds)
        results = {
            "machine": common.machine_facts(),
            "split": FLAGS.split,
            "flags": {k: FLAGS[k].value for k in
                      ("batch", "learning_rate", "slicing_kwargs")},
            "datasets": {name: run(name, FLAGS.kinds, seeds)
                         for name in FLAGS.datasets},
        }
    report(results)
    common.write_json("accuracy", results, FLAGS.output)


if __name__ == "__main__":
    app.run(main)
