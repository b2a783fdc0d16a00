"""Slicing a pretrained char-LM and text Transformer, against sliced from scratch.

The sequence half of `benchmarks/slice_pretrained.py` (same stages, same
recipes), scored in test bits per character (BPC, lower is better). Prints
one table per model and writes
benchmarks/results/slice_pretrained_sequences.json (or --output).

    python benchmarks/slice_pretrained_sequences.py [--models=char_lm,text_transformer]
        [--seeds=3] [--first_seed=0] [--steps=800] [--recipes=default,teacher,high_lr]
        [--stages=pretrained,converted,finetune,scratch] [--fractions=0.1,0.25,0.5]
    python benchmarks/slice_pretrained_sequences.py --recipes=high_lr --stages=finetune
    python benchmarks/slice_pretrained_sequences.py --merge='parts/*.json' --output=OUT.json
    python benchmarks/slice_pretrained_sequences.py --markdown=RESULT.json

Data, networks and training are those of `examples/char_lm.py` and
`examples/text_transformer.py` (imported): next-character prediction on
Python's documentation (`pydoc_data.topics`, split by position 90/5/5),
non-overlapping windows of 32 characters, batch 32, Adam with global
gradient clipping at 5. The plain networks are the examples' full-width
plain models: char-LM embedding 32 - LSTM 64 - LSTM 64 - dense; Transformer
2 pre-norm causal blocks, residual width 64, 4 heads, feed-forward 256.

For each model and seed (the seed sets every initialization and the order
of the training windows):
1. `pretrained`: the plain network trained alone for `--steps` steps
   (run by every part that converts or fine-tunes it).
2. `converted/<rewire>`: `keras_slicing.slice_model(pretrained, rewire=...)`
   with no rewiring and each rewiring, no training (`"taylor"` measures on
   the first 1,024 training windows).
3. `finetune/<recipe>@<fraction>`: the converted model (rewiring `"bn"`)
   fine-tuned for 10%, 25% and 50% of the scratch steps (one run with a
   constant learning rate, measured when each fraction is reached, exact
   in steps: 300/750/1,500 of 3,000).
   Recipes: `default` (labels) and `teacher` (the pretrained model as a
   frozen teacher) as in slice_pretrained.py, at a third of the scratch
   learning rate; `high_lr`: `default` at the scratch learning rate;
   `narrow_weights`: `high_lr` with `rate_loss_weights` 1/2/4/8 (widths 1
   to 0.25; the default `3 - 2r` is 1/1.5/2/2.5); `double_lr`: `high_lr`
   at twice the scratch learning rate; `width_lr`: `double_lr` with each
   weight's step scaled by the narrowest width using it (0.5 for the full
   width's own weights, the scratch rate, to 1 for width 0.25's); the
   distillation recipes of slice_pretrained.py (`teacher_high_lr`,
   `teacher_mix_high_lr`, `teacher_mix_t2_high_lr`, `inplace_high_lr`,
   `teacher_mix_narrow_weights`): `high_lr` plus soft targets of the
   frozen pretrained model or of the widest rate.
4. `scratch`: `slice_model` of the untrained plain network trained with the
   library's defaults for the full `--steps`.
The scratch learning rates are the examples' (char-LM 1e-2, Transformer
3e-3). Mean and standard error over seeds; the goals are checked per seed
(fine-tuned minus scratch) with a 0.02 BPC margin.

`--stages` runs some stages, so that seeds and stages run as separate
processes (each writing its own `--output` after every stage) and
`--merge` joins them: per model and seed, the first part that holds a stage
gives it (fine-tuning recipe by recipe).
"""

import argparse
import copy
import glob
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "examples"))

import char_lm  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import text_transformer  # noqa: E402

import keras_slicing  # noqa: E402
from benchmarks import common  # noqa: E402
from benchmarks.slice_pretrained import DISTILLATION_RECIPES  # noqa: E402
from benchmarks.slice_pretrained import FRACTIONS  # noqa: E402
from benchmarks.slice_pretrained import HIGH_LR_WEIGHTS  # noqa: E402
from benchmarks.slice_pretrained import RATES  # noqa: E402
from benchmarks.slice_pretrained import REWIRES  # noqa: E402
from benchmarks.slice_pretrained import complete_recipes  # noqa: E402
from benchmarks.slice_pretrained import mean_se  # noqa: E402
from benchmarks.slice_pretrained import screening  # noqa: E402
from benchmarks.slice_pretrained import table_rows  # noqa: E402
from keras_slicing.conversion.slice_model import DEFAULT_REWIRE  # noqa: E402

SEQ_LEN = 32
BATCH = 32
LEARNING_RATE = {"char_lm": 1e-2, "text_transformer": 3e-3}
FINETUNE_SHARE = 1 / 3  # of the scratch learning rate
# The rewiring of every fine-tuned model: the library's default when the
# results were measured ("bn" is "l1" without batch normalization).
FINETUNE_REWIRE = "bn"
MARGIN = 0.02  # bits per character
TAYLOR_WINDOWS = 1024


def plain_network(name, vocab_size):
    if name == "char_lm":
        return char_lm.plain_lm(vocab_size, SEQ_LEN, 32, 64, 1.0)
    return text_transformer.plain_transformer(vocab_size, SEQ_LEN, 64, 4, 256, 2, 1.0)


# Fine-tuning recipes: the learning rate as a share of the scratch one, and
# the arguments of slice_model that differ from the SlicingModel defaults.
RECIPES = {
    "default": (FINETUNE_SHARE, {}),
    "teacher": (FINETUNE_SHARE, {"distillation": "pretrained"}),
    "high_lr": (1.0, {}),
    "narrow_weights": (1.0, {"rate_loss_weights": (1, 2, 4, 8)}),
    "double_lr": (2.0, {}),
    # Each weight's step scaled by its narrowest width (widths 1 to 0.25):
    # the full width's own weights at the scratch rate, width 0.25's at twice it.
    "width_lr": (2.0, {"step_scales": (0.5, 0.6667, 0.8333, 1)}),
    **{name: (1.0, {"rate_loss_weights": HIGH_LR_WEIGHTS, **options})
       for name, options in DISTILLATION_RECIPES.items()},
}
STAGES = ("pretrained", "converted", "finetune", "scratch")
FULL_SCHEDULE = 3000  # the examples' steps


def recipe_kwargs(recipe, pretrained):
    """`slice_model` arguments of a fine-tuning recipe."""
    if recipe not in RECIPES:
        raise ValueError(f"Unknown recipe. Received: recipe={recipe!r}; "
                         f"allowed: {', '.join(RECIPES)}")
    return {key: pretrained if value == "pretrained" else value
            for key, value in RECIPES[recipe][1].items()}


def load_data():
    train, _, test = char_lm.split_text(char_lm.load_text())
    vocab = char_lm.vocabulary(train)
    x, y = char_lm.windows(train, vocab, SEQ_LEN)
    x_test, y_test = char_lm.windows(test, vocab, SEQ_LEN)
    return len(vocab) + 1, (x, y), (x_test, y_test)


def width_bpc(model, x, y):
    # The rate as an input: one traced predict function serves every width.
    return {
        str(rate): char_lm.bits_per_character(model.predict(
            [x, np.full(len(x), rate, "float32")], batch_size=256, verbose=0), y)
        for rate in RATES
    }


def run_seed(name, seed, steps, recipes, result, save, stages=STAGES, fractions=FRACTIONS):
    """Fills `result` with `stages`, calling `save()` after each."""
    vocab_size, (x, y), (x_test, y_test) = load_data()
    order = char_lm.training_order(len(x), steps, BATCH, seed)
    x, y = x[order], y[order]  # step s reads windows s*BATCH ... (s+1)*BATCH
    learning_rate = LEARNING_RATE[name]

    def train(model, start_step, end_step):
        part = slice(start_step * BATCH, end_step * BATCH)
        model.fit(x[part], y[part], batch_size=BATCH, epochs=1, shuffle=False, verbose=0)

    if "scratch" in stages:
        keras.utils.set_random_seed(seed)
        scratch = keras_slicing.slice_model(plain_network(name, vocab_size), rates=RATES,
                                            rewire=None, seed=seed)
        char_lm.compile_lm(scratch, learning_rate)
        start = time.perf_counter()
        train(scratch, 0, steps)
        result["scratch_seconds"] = time.perf_counter() - start
        result["scratch"] = width_bpc(scratch, x_test, y_test)
        print(f"[{name} seed {seed}] scratch: {_fmt(result['scratch'])} "
              f"({result['scratch_seconds']:.0f} s)", flush=True)
        save()
    if not {"pretrained", "converted", "finetune"} & set(stages):
        return

    keras.utils.set_random_seed(seed)
    pretrained = char_lm.compile_lm(plain_network(name, vocab_size), learning_rate)
    start = time.perf_counter()
    train(pretrained, 0, steps)
    result["pretrained_seconds"] = time.perf_counter() - start
    result["pretrained"] = char_lm.bits_per_character(
        pretrained.predict(x_test, batch_size=256, verbose=0), y_test)
    print(f"[{name} seed {seed}] pretrained {result['pretrained']:.3f} "
          f"({result['pretrained_seconds']:.0f} s)", flush=True)
    save()

    data = (x[:TAYLOR_WINDOWS], y[:TAYLOR_WINDOWS])
    for rewire in REWIRES if "converted" in stages else ():
        converted = result.setdefault("converted", {})
        sliced = keras_slicing.slice_model(pretrained, rates=RATES, rewire=rewire,
                                           data=data, seed=seed)
        converted[str(rewire)] = width_bpc(sliced, x_test, y_test)
        print(f"[{name} seed {seed}] converted {rewire}: "
              f"{_fmt(converted[str(rewire)])}", flush=True)
        save()

    for recipe in recipes if "finetune" in stages else ():
        options = recipe_kwargs(recipe, pretrained)
        scales = options.pop("step_scales", None)
        keras.utils.set_random_seed(seed)
        sliced = keras_slicing.slice_model(pretrained, rates=RATES, rewire=FINETUNE_REWIRE,
                                           data=data, seed=seed, **options)
        if scales is not None:
            sliced._set_rate_step_scales(scales)  # private until it earns a place
        char_lm.compile_lm(sliced, learning_rate * RECIPES[recipe][0])
        done, runs = 0, result.setdefault("finetune", {}).setdefault(recipe, {})
        start = time.perf_counter()
        for fraction in fractions:
            until = round(fraction * steps)
            train(sliced, done, until)
            done = until
            runs[str(fraction)] = width_bpc(sliced, x_test, y_test)
            print(f"[{name} seed {seed}] {recipe}@{fraction}: {_fmt(runs[str(fraction)])} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
            save()
        result[f"finetune_{recipe}_seconds"] = time.perf_counter() - start
        save()


def _fmt(values):
    return ", ".join(f"{rate}: {bpc:.3f}" for rate, bpc in values.items())


# ---------------------------------------------------------------- report


def summarize(runs):
    """Mean and s.e. over the seeds that ran to the end, and the goals."""
    # A fine-tuning run counts once it ended (its seconds are written last).
    runs = {seed: {**run, "finetune": {
        recipe: fractions for recipe, fractions in run.get("finetune", {}).items()
        if f"finetune_{recipe}_seconds" in run}} for seed, run in runs.items()}
    seeds = sorted(s for s in runs
                   if {"pretrained", "finetune", "scratch"} <= set(runs[s]))
    if not seeds:
        return {"seeds": []}
    first = runs[seeds[0]]

    def over(get):
        return mean_se([get(runs[s]) for s in seeds])

    rows = table_rows(runs, seeds)
    goals = {}
    for recipe in complete_recipes(runs, seeds):
        # Paired by seed: each fine-tuned run against that seed's scratch run.
        gaps = {
            fraction: {
                str(rate): over(lambda r, c=recipe, f=fraction, k=str(rate):
                                r["finetune"][c][f][k] - r["scratch"][k])
                for rate in RATES
            }
            for fraction in first["finetune"][recipe]
        }
        reached = {
            str(rate): next((f for f in gaps if gaps[f][str(rate)][0] <= MARGIN), None)
            for rate in RATES
        }
        drops = {
            fraction: over(lambda r, c=recipe, f=fraction:
                           r["finetune"][c][f]["1.0"] - r["pretrained"])
            for fraction in gaps
        }
        drop = drops["0.25"]
        goals[recipe] = {
            "finetuned_minus_scratch": gaps,
            "full_width_minus_pretrained": drops,
            "first_fraction_within_margin": reached,
            "within_margin_at_25%": {
                rate: gaps["0.25"][rate][0] <= MARGIN for rate in gaps["0.25"]},
            "full_width_minus_pretrained_at_25%": drop,
            "full_width_within_margin_of_pretrained": drop[0] <= MARGIN,
        }
    rewiring = {
        str(rate): {
            str(rewire): over(lambda r, w=str(rewire), k=str(rate):
                              r["converted"][w][k] - r["converted"]["None"][k])
            for rewire in first.get("converted", {}) if rewire != "None"
        }
        for rate in RATES if rate < 1.0
    }
    seconds = {
        key: over(lambda r, k=key: r[k])
        for key in first if key.endswith("_seconds")
        and all(key in runs[s] for s in seeds)
    }
    return {"seeds": seeds, "rows": rows, "goals": goals,
            "rewired_minus_none_after_conversion": rewiring, "seconds": seconds,
            "screening": screening(runs, seeds, "bpc")}


def report(results):
    for name, per_seed in results["runs"].items():
        summary = summarize(per_seed)
        results.setdefault("summary", {})[name] = summary
        if not summary["seeds"]:
            print(f"\n{name}: no seed ran to the end")
            continue
        header = ["model"] + [f"r={r:g}" for r in RATES]
        rows = [
            [label] + [f"{values[str(r)][0]:.3f} ± {values[str(r)][1]:.3f}"
                       if str(r) in values else "" for r in RATES]
            for label, values in summary["rows"].items()
        ]
        common.print_table(
            f"{name}: test bits per character, mean ± s.e. over seeds "
            f"{summary['seeds']}", header, rows)
        for recipe, goal in summary["goals"].items():
            gaps = ", ".join(f"{r}: {g[0]:+.3f} ± {g[1]:.3f}" for r, g in
                             goal["finetuned_minus_scratch"]["0.25"].items())
            print(f"  {recipe} at 25% minus scratch: {gaps}; within {MARGIN}: "
                  f"{goal['within_margin_at_25%']}; first fraction within: "
                  f"{goal['first_fraction_within_margin']}; full width minus "
                  f"pretrained {goal['full_width_minus_pretrained_at_25%'][0]:+.3f}")
        for recipe, per_seed in summary["screening"].items():
            for seed, fractions in per_seed.items():
                print(f"  screening {recipe}, seed {seed}, minus scratch: " + "; ".join(
                    f"{fraction}: " + ", ".join(f"{r} {g:+.3f}" for r, g in
                                                 values["minus_scratch"].items())
                    for fraction, values in fractions.items()))
        for rate, deltas in summary["rewired_minus_none_after_conversion"].items():
            print(f"  converted at {rate}, rewired minus none: " + ", ".join(
                f"{w} {d[0]:+.3f} ± {d[1]:.3f}" for w, d in deltas.items()))
    return results


def merge(parts):
    """One result from several (seeds and stages run apart, extra recipes).

    Per model and seed, the first part that holds a stage gives it; the
    fine-tuning stage is joined recipe by recipe.
    """
    steps = {part["settings"].get("steps") for part in parts}
    if len(steps) > 1:
        raise ValueError(f"Parts of different schedules. Received: steps={sorted(steps)}; "
                         "merge parts with the same --steps")
    results = {**copy.deepcopy(parts[0]), "runs": {}}
    results.pop("summary", None)
    for part in parts:
        for model, per_seed in part["runs"].items():
            for seed, run in per_seed.items():
                into = results["runs"].setdefault(model, {}).setdefault(seed, {})
                for key, value in copy.deepcopy(run).items():
                    if isinstance(value, dict) and key in into:
                        for inner, stage in value.items():
                            into[key].setdefault(inner, stage)
                    else:
                        into.setdefault(key, value)
        results["settings"]["recipes"] = list(dict.fromkeys(
            results["settings"]["recipes"] + part["settings"]["recipes"]))
    results["settings"]["finetune_share_of_learning_rate"] = {
        recipe: RECIPES[recipe][0] for recipe in results["settings"]["recipes"]}
    return results


def markdown(results, path):
    """The docs' tables of the result file at `path`, as Markdown."""
    lines = []
    for name, summary in results["summary"].items():
        if not summary["seeds"]:
            continue
        lines += [f"**{name}** ({results['settings']['steps']} steps from scratch, "
                  f"seeds {', '.join(summary['seeds'])}):", "",
                  f"<!-- numbers: benchmarks/results/{os.path.basename(path)} -->",
                  "| model | " + " | ".join(f"width {r:g}" for r in RATES) + " |",
                  "|---|" + "---:|" * len(RATES)]
        for label, values in summary["rows"].items():
            cells = [f"{values[str(r)][0]:.3f} ± {values[str(r)][1]:.3f}"
                     if str(r) in values else "" for r in RATES]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"<!-- numbers: benchmarks/results/{os.path.basename(path)} -->",
              "| model, recipe, share of steps | " + " | ".join(
                  f"width {r:g}" for r in RATES) + " | full width minus pretrained |",
              "|---|" + "---:|" * (len(RATES) + 1)]
    for name, summary in results["summary"].items():
        for recipe, goal in summary.get("goals", {}).items():
            for fraction, gaps in goal["finetuned_minus_scratch"].items():
                drop = goal["full_width_minus_pretrained"][fraction]
                cells = [f"{gaps[str(r)][0]:+.3f} ± {gaps[str(r)][1]:.3f}" for r in RATES]
                lines.append(f"| {name}, {recipe}, {float(fraction):.0%} | "
                             + " | ".join(cells) + f" | {drop[0]:+.3f} ± {drop[1]:.3f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="char_lm,text_transformer")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first_seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=800,
                        help="Full schedule in steps (pretrained and scratch).")
    parser.add_argument("--recipes", default=",".join(RECIPES),
                        help="Fine-tuning recipes, comma-separated.")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help="Stages to run, comma-separated (converting or "
                             "fine-tuning trains the plain model too); --merge "
                             "joins parts.")
    parser.add_argument("--fractions", default=",".join(map(str, FRACTIONS)),
                        help="Fine-tuning lengths as fractions of --steps.")
    parser.add_argument("--merge", default=None,
                        help="JSON files to combine, comma-separated (patterns such "
                             "as parts/*.json allowed).")
    parser.add_argument("--markdown", default=None,
                        help="Print the Markdown tables of this result file.")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()

    name = "slice_pretrained_sequences"
    if args.markdown:
        print(markdown(json.loads(open(args.markdown).read()), args.markdown))
        return
    if args.merge:
        paths = [p for item in args.merge.split(",") for p in sorted(glob.glob(item))]
        if not paths:
            raise ValueError(f"No file to merge. Received: merge={args.merge!r}; "
                             "allowed: JSON files or patterns, comma-separated")
        parts = [json.loads(open(p).read()) for p in paths]
        common.write_json(name, report(merge(parts)), args.output)
        return

    recipes = args.recipes.split(",")
    for recipe in recipes:
        recipe_kwargs(recipe, None)  # an unknown name fails before training
    stages = args.stages.split(",")
    if not set(stages) <= set(STAGES):
        raise ValueError(f"Unknown stage. Received: stages={args.stages!r}; "
                         f"allowed: {', '.join(STAGES)}")
    fractions = [float(f) for f in args.fractions.split(",")]
    results = {
        "machine": {**common.machine_facts(),
                    "note": "2-core machine shared with other jobs; seconds "
                            "are indicative"},
        "settings": {
            "data": "pydoc_data.topics, split by position 90/5/5 (test split scored)",
            "rates": RATES, "steps": args.steps, "batch": BATCH, "seq_len": SEQ_LEN,
            "learning_rate": LEARNING_RATE,
            "finetune_share_of_learning_rate": {r: RECIPES[r][0] for r in recipes},
            "default_rewire": DEFAULT_REWIRE, "finetune_rewire": FINETUNE_REWIRE,
            "fractions": fractions, "recipes": recipes, "margin_bpc": MARGIN,
            "note": ("the examples' full schedule" if args.steps == FULL_SCHEDULE else
                     f"schedule shortened from the examples' {FULL_SCHEDULE:,} steps "
                     "to fit a shared 2-core machine")
                    + "; pretrained and scratch use the same steps, fine-tuning "
                      "the stated fractions of them",
        },
        "runs": {},
    }
    for model in args.models.split(","):
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            per_seed = results["runs"].setdefault(model, {})
            # Written after every stage: a stopped run keeps what it finished.
            run_seed(model, seed, args.steps, recipes, per_seed.setdefault(str(seed), {}),
                     lambda: common.write_json(name, results, args.output),
                     stages, fractions)
    common.write_json(name, report(results), args.output)


if __name__ == "__main__":
    main()
