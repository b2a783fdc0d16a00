"""Slicing a pretrained plain model, against a sliced model trained from scratch.

Prints one table per data set and writes benchmarks/results/slice_pretrained.json
(or --output).

    python benchmarks/slice_pretrained.py [--datasets=digits,mnist1d] [--seeds=3]
    python benchmarks/slice_pretrained.py --merge=a.json,b.json   # seeds run apart
    python benchmarks/slice_pretrained.py --datasets=mnist1d --epochs=30 \
        --convergence=benchmarks/results/slice_pretrained_convergence.json

With `--convergence` (a result of slice_pretrained_convergence.py, whose
plain models' weights are still in `--checkpoint_dir`), stage 1 loads the
plain model that run saved at `--epochs` epochs instead of training one,
and stage 4 takes that run's sliced model at `--epochs` epochs (the
learning rate is constant: it is the model a `fit` of that many epochs
gives) instead of training another: the schedule the convergence rule
chose, against models trained to convergence.

For each data set and seed (the seed sets every initialization and shuffle):
1. `pretrained`: the plain batch-norm CNN trained alone for the full schedule.
2. `converted/<rewire>`: `keras_slicing.slice_model(pretrained, rewire=...)`
   for no rewiring and every rewiring available, the narrower widths'
   batch-norm statistics calibrated on the training data
   (`data=(x_train, y_train)`), no training.
3. `finetune/<recipe>@<fraction>`: the converted model (rewiring "l1",
   `FINETUNE_REWIRE`) fine-tuned for 10%, 25% and 50% of the from-scratch
   schedule's steps (one run, measured when each fraction is reached; the
   learning rate is constant, so a run stopped there is the same run).
   A fraction is exact in steps: `fit` stops at the batch where
   round(fraction * scratch steps) is reached, mid-epoch if need be, and the
   next part starts a new epoch (digits: 22 batches an epoch, 440 steps,
   44/110/220 at 10/25/50%, whole epochs; MNIST-1D: 32 batches, 320 steps,
   32/80/160, so "25%" stops half-way through the third epoch). Each run
   records its steps (`finetune_steps`). The `default` and `teacher` rows of
   the committed result were measured when fractions were rounded to whole
   epochs: their MNIST-1D "25%" is 64 steps (20%), which the tables say.
   Recipes:
   - `default`: `SlicingModel`'s defaults (`"all"` rates, loss weights
     `3 - 2r`), labels only, Adam at `--finetune_learning_rate` (a third of
     the scratch rate);
   - `teacher`: as `default`, with the pretrained model as a frozen teacher
     (`distillation=pretrained`: every rate learns from its soft targets);
   - `high_lr`: as `default`, with Adam at `--high_learning_rate` (10/3 of
     the scratch rate): the recommended recipe of docs/fine-tuning.md;
   - `higher_lr`: as `high_lr`, at `--higher_learning_rate` (2e-2);
   - `training_lr`: as `high_lr`, at the rate the pretrained model was
     trained with (`--learning_rate`, 3e-3);
   - `narrow_weights`: as `high_lr`, with `rate_loss_weights` 1/2/4/8
     (widths 1 to 0.25; the default `3 - 2r` is 1/1.5/2/2.5): the narrow
     widths' losses weigh more;
   - `narrow_weights_higher_lr`: both;
   - `narrow_weights_mid_lr`: as `narrow_weights`, at `--mid_learning_rate`
     (5e-3);
   - `narrow_weights_27`: as `narrow_weights`, with weights 1/3/9/27;
   - `narrow_sampling`: as `high_lr`, with three rates a step: width 0.25
     and two of the others drawn with probabilities 1:2:3 (widths 1, 0.75,
     0.5; scheduler "random_min", `rate_probabilities`);
   - `width_lr`: as `high_lr`, each weight's step scaled by the narrowest
     width using it: 0.3 (full width only: the training rate), 0.53, 0.77,
     1 (width 0.25); `width_lr_higher`: at 2e-2, scales 0.15 to 1 (the same
     training rate for the full width's own weights); each
     `*_narrow_weights` with loss weights 1/2/4/8;
   - `teacher_high_lr`, `teacher_mix_high_lr`, `teacher_mix_t2_high_lr`,
     `inplace_high_lr` (`DISTILLATION_RECIPES`): `high_lr` with its loss
     weights `3 - 2r` passed explicitly, plus a soft-target term: the
     frozen pretrained teacher with `distillation_weight` 1 (soft targets
     only) or 0.5 (half labels), the latter also at
     `distillation_temperature` 2; or in-place distillation (the widest
     rate teaches the narrower ones, weight 1);
     `teacher_mix_narrow_weights`: the teacher at 0.5 with loss weights
     1/2/4/8.
   `--recipes` picks some; `--rewires=0` skips stage 2, so that a new
   recipe can run alone and `--merge` joins its stages to an earlier file's
   (stage by stage: each recipe's rows come from the part that ran it;
   `--scratch=0` skips stage 4 for such a part: its seed then counts only
   merged with a part that has it).
4. `scratch`: the same sliced network (`slice_model` of the untrained plain
   model) trained from scratch with the defaults for the full schedule.

Every model: batch 64 (digits) or 128 (MNIST-1D), cross-entropy on logits; `fit` ends by recalibrating
every width's batch-norm statistics (its default). Accuracies are on the
test split (digits: a stratified 25%, seed 0; MNIST-1D: its 1,000 test
signals), mean and standard error over seeds.

The batch-norm statistics' cost is measured too: one calibration pass of
the trained sliced model on fit's default sample (2,048 examples or all the
training data), against one training epoch of the same model.

Networks (plain): digits conv32-BN-ReLU-conv64-BN-ReLU-GAP-dense10;
MNIST-1D conv32/2-BN-ReLU-conv64/2-BN-ReLU-conv64/2-BN-ReLU-flatten-dense10;
batch-norm momentum 0.9.
The machine may be shared: timings are medians of a few repeats, and the
JSON says how many CPUs there were.
"""

import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_slicing  # noqa: E402
from benchmarks import common  # noqa: E402
from benchmarks.accuracy import load  # noqa: E402
from keras_slicing.conversion.slice_model import DEFAULT_REWIRE  # noqa: E402

RATES = (1.0, 0.75, 0.5, 0.25)
REWIRES = (None, "l1", "bn", "taylor")
FRACTIONS = (0.1, 0.25, 0.5)
# Distillation at the high rate: `high_lr` plus a soft-target term, with
# `high_lr`'s loss weights `3 - 2r` kept (distillation's own default is
# even) so that the soft targets are the one change.
HIGH_LR_WEIGHTS = (1.0, 1.5, 2.0, 2.5)
DISTILLATION_RECIPES = {
    "teacher_high_lr": {"distillation": "pretrained"},
    "teacher_mix_high_lr": {"distillation": "pretrained", "distillation_weight": 0.5},
    "teacher_mix_t2_high_lr": {"distillation": "pretrained", "distillation_weight": 0.5,
                               "distillation_temperature": 2.0},
    "inplace_high_lr": {"distillation": "inplace"},
    "teacher_mix_narrow_weights": {"distillation": "pretrained", "distillation_weight": 0.5,
                                   "rate_loss_weights": (1, 2, 4, 8)},
}
# Each recipe's learning rate (the argument that sets it) and the arguments
# of slice_model that differ from the SlicingModel defaults.
RECIPES = {
    "default": ("finetune_learning_rate", {}),
    "teacher": ("finetune_learning_rate", {"distillation": "pretrained"}),
    "high_lr": ("high_learning_rate", {}),
    "training_lr": ("learning_rate", {}),
    "higher_lr": ("higher_learning_rate", {}),
    "narrow_weights": ("high_learning_rate", {"rate_loss_weights": (1, 2, 4, 8)}),
    "narrow_weights_higher_lr": ("higher_learning_rate",
                                 {"rate_loss_weights": (1, 2, 4, 8)}),
    "narrow_weights_mid_lr": ("mid_learning_rate", {"rate_loss_weights": (1, 2, 4, 8)}),
    "narrow_weights_27": ("high_learning_rate", {"rate_loss_weights": (1, 3, 9, 27)}),
    "narrow_sampling": ("high_learning_rate", {
        "scheduler": "random_min", "num_random": 2,
        "rate_probabilities": (1, 2, 3, 4),
    }),
    # Width-aware steps: each weight's step scaled by its narrowest width's
    # entry (widths 1 to 0.25), linear in the rate; the weights only the
    # full width uses step at the training rate (3e-3).
    "width_lr": ("high_learning_rate", {"step_scales": (0.3, 0.5333, 0.7667, 1)}),
    "width_lr_narrow_weights": ("high_learning_rate", {
        "step_scales": (0.3, 0.5333, 0.7667, 1), "rate_loss_weights": (1, 2, 4, 8)}),
    "width_lr_higher": ("higher_learning_rate",
                        {"step_scales": (0.15, 0.4333, 0.7167, 1)}),
    "width_lr_higher_narrow_weights": ("higher_learning_rate", {
        "step_scales": (0.15, 0.4333, 0.7167, 1), "rate_loss_weights": (1, 2, 4, 8)}),
    **{name: ("high_learning_rate", {"rate_loss_weights": HIGH_LR_WEIGHTS, **options})
       for name, options in DISTILLATION_RECIPES.items()},
}
# What runs without --recipes: the rows of the committed result's first run.
DEFAULT_RECIPES = ("default", "teacher", "high_lr")
# The rewiring of every fine-tuned model: the library's default when the
# "default" and "teacher" rows were measured, kept so that rows compare.
FINETUNE_REWIRE = "l1"
# Short schedules: the suite's 2-core machine is shared. Batch norm lets
# both CNNs fit their training data within them.
EPOCHS = {"digits": 20, "mnist1d": 10}
# Batches per epoch: digits 22, MNIST-1D 32 (its 4,000 examples at 128).
BATCHES = {"digits": 64, "mnist1d": 128}
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def plain_network(name):
    # Batch-norm momentum 0.9 (PyTorch's 0.1): with Keras' 0.99 the plain
    # models' moving averages lag so far behind on these short schedules
    # that they evaluate at 18-62% (measured here); slice_model carries it.
    K = keras.layers
    if name == "digits":
        x = keras.Input((8, 8, 1))
        h = x
        for filters in (32, 64):
            h = K.Conv2D(filters, 3, padding="same", use_bias=False)(h)
            h = K.ReLU()(K.BatchNormalization(momentum=0.9)(h))
        h = K.GlobalAveragePooling2D()(h)
    else:
        x = keras.Input((40, 1))
        h = x
        for i, filters in enumerate((32, 64, 64)):
            h = K.Conv1D(filters, 5 if i == 0 else 3, strides=2, padding="same",
                         use_bias=False)(h)
            h = K.ReLU()(K.BatchNormalization(momentum=0.9)(h))
        h = K.Flatten()(h)
    return keras.Model(x, K.Dense(10)(h), name=f"{name}_cnn")


def compile_model(model, learning_rate):
    model.compile(keras.optimizers.Adam(learning_rate), LOSS, metrics=["accuracy"])


def width_accuracy(model, x, y):
    """Test accuracy (percent) of every width of a sliced model."""
    return {
        str(rate): 100.0 * float(np.mean(
            np.argmax(model.at_rate(rate).predict(x, batch_size=512, verbose=0), -1) == y
        ))
        for rate in RATES
    }


def plain_accuracy(model, x, y):
    return 100.0 * float(np.mean(
        np.argmax(model.predict(x, batch_size=512, verbose=0), -1) == y
    ))


class _EpochTimes(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times = getattr(self, "times", []) + [time.perf_counter() - self.start]


class _StopAfter(keras.callbacks.Callback):
    """Stops `fit` after `steps` batches, mid-epoch if need be."""

    def __init__(self, steps):
        super().__init__()
        self.steps = steps
        self.done = 0

    def on_train_batch_end(self, batch, logs=None):
        self.done += 1
        if self.done >= self.steps:
            self.model.stop_training = True


def batches_per_epoch(name, x_train):
    return math.ceil(len(x_train) / BATCHES[name])


def finetune(name, recipe, pretrained, data, x_test, y_test, seed, epochs, args,
             result, save):
    """Fine-tunes `slice_model(pretrained)` with `recipe`, measured at FRACTIONS.

    Each fraction of the scratch run's steps is reached exactly: a `fit`
    covering the epochs it needs stops at that batch (with whole epochs, the
    same `fit` calls as when fractions were rounded to epochs).
    """
    x_train, y_train = data
    batch = BATCHES[name]
    per_epoch = batches_per_epoch(name, x_train)
    rate_name, options = RECIPES[recipe]
    if options.get("distillation") == "pretrained":
        options = {**options, "distillation": pretrained}
    scales = options.get("step_scales")
    options = {k: v for k, v in options.items() if k != "step_scales"}
    keras.utils.set_random_seed(seed)
    sliced = keras_slicing.slice_model(
        pretrained, rates=RATES, rewire=FINETUNE_REWIRE, data=data, seed=seed,
        **options
    )
    if scales is not None:
        sliced._set_rate_step_scales(scales)  # private until it earns a place
    compile_model(sliced, getattr(args, rate_name))
    runs = result["finetune"].setdefault(recipe, {})
    steps = result.setdefault("finetune_steps", {}).setdefault(recipe, {})
    done_steps = done_epochs = 0
    start = time.perf_counter()
    for fraction in FRACTIONS:
        until = round(fraction * epochs * per_epoch)
        more = math.ceil((until - done_steps) / per_epoch)
        sliced.fit(x_train, y_train, batch_size=batch, initial_epoch=done_epochs,
                   epochs=done_epochs + more, verbose=0,
                   callbacks=[_StopAfter(until - done_steps)])
        done_steps, done_epochs = until, done_epochs + more
        steps[str(fraction)] = until
        runs[str(fraction)] = width_accuracy(sliced, x_test, y_test)
        print(f"[{name} seed {seed}] {recipe}@{fraction}: {runs[str(fraction)]} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
        save()
    result[f"finetune_{recipe}_seconds"] = time.perf_counter() - start


def run_seed(name, seed, epochs, args, result, save):
    """Fills `result` stage by stage, calling `save()` after each."""
    x_train, y_train, x_test, y_test = load(name, "test")
    data = (x_train, y_train)
    batch = BATCHES[name]
    result.setdefault("converted", {})
    result.setdefault("finetune", {})

    keras.utils.set_random_seed(seed)
    pretrained = plain_network(name)
    compile_model(pretrained, args.learning_rate)
    start = time.perf_counter()
    if args.convergence:
        converged = args.convergence["runs"][name][str(seed)]
        pretrained.load_weights(checkpoint_path(args.checkpoint_dir, name, seed, epochs))
    else:
        pretrained.fit(x_train, y_train, batch_size=batch, epochs=epochs, verbose=0)
    result["pretrained"] = plain_accuracy(pretrained, x_test, y_test)
    if args.convergence and result["pretrained"] != converged["pretrained"][str(epochs)]:
        raise ValueError(
            f"{name} seed {seed}: the checkpoint in {args.checkpoint_dir} is not the "
            f"convergence run's model: accuracy {result['pretrained']} against "
            f"{converged['pretrained'][str(epochs)]}. Rerun the convergence benchmark."
        )
    result["pretrained_seconds"] = time.perf_counter() - start
    print(f"[{name} seed {seed}] pretrained {result['pretrained']:.2f} "
          f"({result['pretrained_seconds']:.0f} s)", flush=True)
    save()

    for rewire in (REWIRES if args.rewires else ()):
        try:
            sliced = keras_slicing.slice_model(
                pretrained, rates=RATES, rewire=rewire, data=data, seed=seed
            )
        except (ImportError, NotImplementedError) as error:
            print(f"[{name} seed {seed}] rewire={rewire} unavailable: {error}")
            continue
        result["converted"][str(rewire)] = width_accuracy(sliced, x_test, y_test)
        print(f"[{name} seed {seed}] converted {rewire}: "
              f"{result['converted'][str(rewire)]}", flush=True)
        save()

    for recipe in filter(None, args.recipes.split(",")):
        finetune(name, recipe, pretrained, data, x_test, y_test, seed, epochs,
                 args, result, save)
    if not args.scratch:
        return
    if args.convergence:
        # The learning rate is constant: the convergence run's sliced model
        # at `epochs` epochs is the model from scratch of this schedule.
        result["scratch"] = converged["scratch"][str(epochs)]
        result["scratch_source"] = f"convergence run at epoch {epochs}"
        result["epoch_seconds"] = converged["epoch_seconds"]
        result["calibration_seconds"] = converged["calibration_seconds"]
        save()
        return

    keras.utils.set_random_seed(seed)
    scratch = keras_slicing.slice_model(plain_network(name), rates=RATES, rewire=None,
                                        seed=seed)
    compile_model(scratch, args.learning_rate)
    timer = _EpochTimes()
    start = time.perf_counter()
    scratch.fit(x_train, y_train, batch_size=batch, epochs=epochs, verbose=0,
                callbacks=[timer])
    result["scratch_seconds"] = time.perf_counter() - start
    result["scratch"] = width_accuracy(scratch, x_test, y_test)
    print(f"[{name} seed {seed}] scratch: {result['scratch']}", flush=True)
    save()

    result["calibration_seconds"] = calibration_seconds(scratch, x_train, batch)
    result["epoch_seconds"] = float(np.median(timer.times[1:]))
    save()


def checkpoint_path(directory, name, seed, epochs):
    """Where slice_pretrained_convergence.py saves a plain model's weights."""
    return os.path.join(directory, f"{name}_seed{seed}_epoch{epochs}.weights.h5")


def calibration_seconds(model, x_train, batch):
    """The cost of the statistics: a calibration pass as fit makes it (its
    default sample, fit's batch size), median of three after a traced one."""
    sample = x_train[:keras_slicing.calibration.CALIBRATION_EXAMPLES]
    keras_slicing.calibrate_batchnorm(model, sample, batch_size=batch)
    passes = []
    for _ in range(3):
        start = time.perf_counter()
        keras_slicing.calibrate_batchnorm(model, sample, batch_size=batch)
        passes.append(time.perf_counter() - start)
    return float(np.median(passes))


# ---------------------------------------------------------------- report


def mean_se(values):
    values = np.asarray(values, dtype=float)
    se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
    return float(values.mean()), float(se)


def finetune_steps(run, recipe, fraction, epochs, per_epoch):
    """The steps a fine-tuned row ran: recorded, or whole epochs (older rows)."""
    recorded = run.get("finetune_steps", {}).get(recipe, {})
    if str(fraction) in recorded:
        return recorded[str(fraction)]
    return round(float(fraction) * epochs) * per_epoch


def complete_recipes(runs, seeds):
    """The recipes every seed ran, in the first seed's order."""
    return [c for c in runs[seeds[0]]["finetune"]
            if all(c in runs[s]["finetune"] for s in seeds)]


def screening(runs, seeds, score="accuracy"):
    """Recipes some seeds ran: per seed, the `score` and gap to its scratch run."""
    partial = {}
    for s in seeds:
        for recipe, fractions in runs[s]["finetune"].items():
            if recipe in complete_recipes(runs, seeds):
                continue
            partial.setdefault(recipe, {})[s] = {
                fraction: {
                    score: values,
                    "minus_scratch": {k: v - runs[s]["scratch"][k]
                                      for k, v in values.items()},
                }
                for fraction, values in fractions.items()
            }
    return partial


def table_rows(runs, seeds, epochs=None, per_epoch=None):
    """`{row label: {rate: (mean, s.e.)}}` over `seeds` of every stage.

    The stages of the first seed name the rows; every seed must have them.
    A fine-tuned row is labelled with the share of the scratch steps it ran
    (of `epochs` epochs of `per_epoch` steps; without them, runs that stop
    at the exact step, the fraction itself).
    """
    first = runs[seeds[0]]

    def over(get):
        return mean_se([get(runs[s]) for s in seeds])

    rows = {"pretrained (plain)": {"1.0": over(lambda r: r["pretrained"])}}
    for rewire in first.get("converted", {}):
        rows[f"converted, rewire={rewire}"] = {
            str(rate): over(lambda r, w=rewire, k=str(rate): r["converted"][w][k])
            for rate in RATES
        }
    for recipe in complete_recipes(runs, seeds):
        for fraction in first["finetune"][recipe]:
            share = float(fraction) if epochs is None else finetune_steps(
                first, recipe, fraction, epochs, per_epoch) / (epochs * per_epoch)
            rows[f"fine-tuned {recipe}, {share:.0%} of steps"] = {
                str(rate): over(
                    lambda r, c=recipe, f=fraction, k=str(rate): r["finetune"][c][f][k]
                )
                for rate in RATES
            }
    rows["scratch (100% of steps)"] = {
        str(rate): over(lambda r, k=str(rate): r["scratch"][k]) for rate in RATES
    }
    return rows


def summarize(runs, epochs, per_epoch):
    """Mean and s.e. over seeds of every accuracy, and the goals' verdicts.

    Only seeds that ran to the end count (a stopped run saves its stages),
    except in `converted_only`: the conversions of every seed that has them.
    """
    seeds = sorted(s for s in runs if "epoch_seconds" in runs[s])
    converted = sorted(s for s in runs if len(runs[s].get("converted", {})) >= 3)
    partial = {"converted_only": {
        "seeds": converted,
        "rows": {
            f"converted, rewire={w}": {
                str(rate): mean_se([runs[s]["converted"][w][str(rate)] for s in converted])
                for rate in RATES
            }
            for w in (runs[converted[0]]["converted"] if converted else ())
        },
        "pretrained": mean_se([runs[s]["pretrained"] for s in converted])
        if converted else None,
    }}
    if not seeds:
        return {"seeds": [], **partial}
    first = runs[seeds[0]]

    def over(get):
        return mean_se([get(runs[s]) for s in seeds])

    rows = table_rows(runs, seeds, epochs, per_epoch)
    goals = {}
    for recipe in complete_recipes(runs, seeds):
        # Paired by seed: each fine-tuned run against that seed's scratch run.
        gaps = {
            str(rate): over(lambda r, c=recipe, k=str(rate):
                            r["finetune"][c]["0.25"][k] - r["scratch"][k])
            for rate in RATES
        }
        drop = over(lambda r, c=recipe: r["finetune"][c]["0.25"]["1.0"] - r["pretrained"])
        goals[recipe] = {
            "steps_at_25%": finetune_steps(first, recipe, "0.25", epochs, per_epoch),
            "gap_to_scratch_at_25%": gaps,
            "within_0.5_of_scratch_by_width": {k: g[0] >= -0.5 for k, g in gaps.items()},
            "every_width_within_0.5_of_scratch": all(g[0] >= -0.5 for g in gaps.values()),
            "full_width_minus_pretrained_at_25%": drop,
            "full_width_within_0.3_of_pretrained": drop[0] >= -0.3,
        }
    narrow = {
        str(rewire): over(lambda r, w=str(rewire): r["converted"][w]["0.25"])
        for rewire in first["converted"]
    }
    timing = {
        "calibration_seconds": over(lambda r: r["calibration_seconds"]),
        "epoch_seconds": over(lambda r: r["epoch_seconds"]),
        "calibration_over_epoch": over(
            lambda r: r["calibration_seconds"] / r["epoch_seconds"]
        ),
    }
    return {"seeds": seeds, "rows": rows, "goals": goals,
            "screening": screening(runs, seeds),
            "converted_at_0.25": narrow, "timing": timing, **partial}


def report(results):
    for name, per_seed in results["runs"].items():
        epochs = results["settings"]["epochs"][name]
        per_epoch = results["settings"].setdefault("batches_per_epoch", {}).get(name)
        if per_epoch is None:
            per_epoch = batches_per_epoch(name, load(name, "test")[0])
            results["settings"]["batches_per_epoch"][name] = per_epoch
        summary = summarize(per_seed, epochs, per_epoch)
        results.setdefault("summary", {})[name] = summary
        if not summary["seeds"]:
            print(f"\n{name}: no seed ran to the end; conversions of seeds "
                  f"{summary['converted_only']['seeds']}: "
                  f"{summary['converted_only']['rows']}")
            continue
        # Fine-tuning stops at exact steps (rows measured at whole epochs
        # say so in their labels and the goals' steps_at_25%).
        total = epochs * per_epoch
        summary["finetune_epochs"] = {
            str(f): round(f * total) / per_epoch for f in results["settings"]["fractions"]
        }
        summary["finetune_step_fraction"] = {
            str(f): round(f * total) / total for f in results["settings"]["fractions"]
        }
        header = ["model"] + [f"r={r:g}" for r in RATES]
        rows = []
        for label, values in summary["rows"].items():
            rows.append([label] + [
                f"{values[str(r)][0]:.2f} ± {values[str(r)][1]:.2f}"
                if str(r) in values else "" for r in RATES
            ])
        common.print_table(
            f"{name}: test accuracy (%), mean ± s.e. over seeds "
            f"{summary['seeds']}", header, rows,
        )
        for recipe, goal in summary["goals"].items():
            gaps = ", ".join(
                f"{r}: {g[0]:+.2f} ± {g[1]:.2f}"
                for r, g in goal["gap_to_scratch_at_25%"].items()
            )
            print(f"  {recipe} at 25% ({goal['steps_at_25%']} steps) minus scratch: "
                  f"{gaps}; every width "
                  f"within 0.5: {goal['every_width_within_0.5_of_scratch']}; full "
                  f"width minus pretrained {goal['full_width_minus_pretrained_at_25%'][0]:+.2f}"
                  f" (within 0.3: {goal['full_width_within_0.3_of_pretrained']})")
        t = summary["timing"]
        print(f"  calibration pass {t['calibration_seconds'][0]:.2f} s, training "
              f"epoch {t['epoch_seconds'][0]:.2f} s: "
              f"{t['calibration_over_epoch'][0]:.2f} epochs")
    return results


def markdown(results):
    """The docs' tables of a result file, as Markdown."""
    lines = []
    for name, summary in results["summary"].items():
        epochs = results["settings"]["epochs"][name]
        if not summary["seeds"]:
            summary = summary["converted_only"]
            summary["rows"] = {
                "pretrained (plain)": {"1.0": summary["pretrained"]},
                **summary["rows"],
            }
        lines += [f"**{name}** ({epochs} epochs from scratch, seeds "
                  f"{', '.join(summary['seeds'])}):", "",
                  "| model | " + " | ".join(f"width {r:g}" for r in RATES) + " |",
                  "|---|" + "---:|" * len(RATES)]
        for label, values in summary["rows"].items():
            cells = [
                f"{values[str(r)][0]:.2f} ± {values[str(r)][1]:.2f}"
                if str(r) in values else "" for r in RATES
            ]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def merge_stages(into, stages, where):
    """Adds a run's stages to `into`; stages of both (e.g. recipes) join.

    A later part's value wins; a pretrained or scratch accuracy that
    differs (the runs did not reproduce each other) is reported.
    """
    for key, value in stages.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            if key == "scratch" and into[key] != value:
                print(f"{where}: scratch differs between parts: {into[key]} "
                      f"and {value}")
            into[key] = {**into[key], **value} if key != "scratch" else value
        else:
            if key == "pretrained" and key in into and into[key] != value:
                print(f"{where}: pretrained differs between parts: {into[key]} "
                      f"and {value}")
            into[key] = value


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits,mnist1d")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first_seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=0,
                        help="Full schedule (0: 20 digits, 10 MNIST-1D).")
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--finetune_learning_rate", type=float, default=1e-3)
    parser.add_argument("--high_learning_rate", type=float, default=1e-2,
                        help="Learning rate of the high_lr recipe.")
    parser.add_argument("--mid_learning_rate", type=float, default=5e-3,
                        help="Learning rate of the *mid_lr recipes.")
    parser.add_argument("--higher_learning_rate", type=float, default=2e-2,
                        help="Learning rate of the *higher_lr recipes.")
    parser.add_argument("--recipes", default=",".join(DEFAULT_RECIPES),
                        help="Fine-tuning recipes to run (comma-separated).")
    parser.add_argument("--rewires", type=int, default=1,
                        help="0: skip the conversions with every rewiring.")
    parser.add_argument("--scratch", type=int, default=1,
                        help="0: skip the model from scratch and the timings.")
    parser.add_argument("--convergence", default=None,
                        help="A slice_pretrained_convergence.py result: the "
                             "pretrained model is its checkpoint at --epochs "
                             "and the model from scratch its run at --epochs.")
    parser.add_argument("--checkpoint_dir",
                        default=os.path.join(common.RESULTS_DIR, "checkpoints"),
                        help="Where --convergence's weights were saved.")
    parser.add_argument("--merge", default=None,
                        help="JSON files to combine (a later one's stages win).")
    parser.add_argument("--markdown", default=None,
                        help="Print the Markdown tables of this result file.")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    unknown = set(filter(None, args.recipes.split(","))) - set(RECIPES)
    if unknown:
        parser.error(f"--recipes must name some of {list(RECIPES)}. "
                     f"Received: {sorted(unknown)}")

    if args.convergence:
        if not args.epochs:
            parser.error("--convergence needs --epochs (a checkpoint of its run).")
        args.convergence_path = args.convergence
        args.convergence = json.loads(open(args.convergence).read())
    if args.markdown:
        print(markdown(json.loads(open(args.markdown).read())))
        return
    if args.merge:
        parts = [json.loads(open(p).read()) for p in args.merge.split(",")]
        # Every part's other sections (e.g. `exploration`), a later one's first.
        results = {}
        for part in parts:
            results.update({k: v for k, v in part.items() if k != "summary"})
        results["runs"] = {}
        results["settings"] = {k: v for part in parts for k, v in part["settings"].items()}
        results["settings"]["epochs"] = {}
        for part in parts:
            for name, per_seed in part["runs"].items():
                for seed, stages in per_seed.items():
                    merge_stages(results["runs"].setdefault(name, {})
                                 .setdefault(seed, {}), stages, f"{name} seed {seed}")
                results["settings"]["epochs"][name] = part["settings"]["epochs"][name]
        common.write_json("slice_pretrained", report(results), args.output)
        return

    results = {
        "machine": {**common.machine_facts(),
                    "note": "2-core machine shared with other jobs; timings "
                            "are indicative, ratios measured in one process"},
        "settings": {
            "rates": RATES, "batch": BATCHES, "epochs": {},
            "learning_rate": args.learning_rate,
            "finetune_learning_rate": args.finetune_learning_rate,
            "high_learning_rate": args.high_learning_rate,
            "higher_learning_rate": args.higher_learning_rate,
            "mid_learning_rate": args.mid_learning_rate,
            "finetune_rewire": FINETUNE_REWIRE,
            "default_rewire": DEFAULT_REWIRE, "fractions": FRACTIONS,
            "convergence": args.convergence and args.convergence_path,
        },
        "runs": {},
    }
    for name in args.datasets.split(","):
        epochs = args.epochs or EPOCHS[name]
        results["settings"]["epochs"][name] = epochs
        results["settings"].setdefault("batches_per_epoch", {})[name] = (
            batches_per_epoch(name, load(name, "test")[0]))
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            per_seed = results["runs"].setdefault(name, {})
            # Written after every stage: a stopped run keeps what it finished.
            run_seed(name, seed, epochs, args, per_seed.setdefault(str(seed), {}),
                     lambda: common.write_json("slice_pretrained", results, args.output))
    common.write_json("slice_pretrained", report(results), args.output)


if __name__ == "__main__":
    main()
