"""Searched width configurations against uniform widths at equal cost.

Prints one table per data set and writes benchmarks/results/width_search.json
(or --output).

    python benchmarks/width_search.py [--datasets=digits,mnist1d] [--seeds=3]
    python benchmarks/width_search.py --merge=a.json,b.json  # data sets run apart
    python benchmarks/width_search.py --markdown=benchmarks/results/width_search.json
    python benchmarks/width_search.py --trainings \
        [--datasets=digits,mnist1d,text_transformer]  # uniform vs mixed training

Per data set and seed: the network of `benchmarks/accuracy.py` is trained as
a `SlicingModel` with the library's defaults (rates 1, 0.75, 0.5, 0.25) on
80% of the training split; `search_widths` sees only the other 20% (the
validation split); every number in the tables is measured on the TEST
split, which neither training nor search saw.

Searches, each over the per-group rates named in its row:
- `greedy`: AutoSlim's greedy slimming over the trained rates;
- `greedy_eighths`: the same over every k/8 (widths never trained among
  them);
- `random`: as many random configurations of the trained rates as
  `greedy` evaluated (the reference a search must beat).

Per budget (a fraction of the full width's MACs), the configuration the
search picked on the validation split is compared with the best uniform
width that fits the budget, chosen on the TEST split (an oracle, so the
comparison favours the uniform widths): among the trained rates
(`uniform`), and among every k/8 (`uniform_eighths`). The goal of the
width search: at every budget from the narrowest trained width to the full
one, the searched configuration is at least as accurate on average, and
better by at least 1 point somewhere in 10-40% of the full cost.

With `--trainings`, each data set and seed trains two models on the same
schedule: "uniform" (the sandwich widths plus random middle rates; on the
classifiers both middle rates, the library's default "all") and "mixed"
(`MixedWidthScheduler`: one random middle rate fewer, one random width
configuration instead), and runs the greedy search on each; the text
Transformer of `examples/text_transformer.py` joins the data sets (scored in
test bits per character, its search maximizing minus the validation bits;
a shorter schedule than the example's). Written to
benchmarks/results/width_search_training.json.

The machine is shared with other work: search times are wall-clock and
indicative only.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks.accuracy import EPOCHS  # noqa: E402
from benchmarks.accuracy import RATES  # noqa: E402
from benchmarks.accuracy import load  # noqa: E402
from benchmarks.accuracy import network  # noqa: E402
from keras_slicing import MixedWidthScheduler  # noqa: E402
from keras_slicing import SlicingModel  # noqa: E402
from keras_slicing import model_cost  # noqa: E402
from keras_slicing import search_widths  # noqa: E402
from keras_slicing.search import accuracy  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "examples"))
import char_lm  # noqa: E402
import text_transformer  # noqa: E402

BUDGETS = (0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5,
           0.6, 0.7, 0.8, 0.9, 1.0)
EIGHTHS = tuple(k / 8 for k in range(8, 0, -1))
SEARCHES = ("greedy", "greedy_eighths", "random")
BASELINES = ("uniform", "uniform_eighths")
TRANSFORMER = "text_transformer"
SEQ_LEN = 32
# The text Transformer's schedule, in steps of 32 windows: shorter than the
# example's 3,000 (benchmarks/results/text_transformer.json) to fit six
# trainings on a shared 2-core machine.
TRANSFORMER_STEPS = 400
TRAININGS = ("uniform", "mixed")
# Mixed configurations trained: each set of a step's rates is traced once on
# TensorFlow, so the pool is kept small (8 instead of the default 16).
POOL_SIZE = 8
# The goal's margin: 1 point of accuracy; for bits per character (where
# the widths are 0.05-0.3 bits apart) 0.02 bits.
MARGIN = {TRANSFORMER: 0.02}


def sign_of(name):
    """+1 where the score is higher-better (accuracy), -1 for bits per character."""
    return -1.0 if name == TRANSFORMER else 1.0


def train_and_search(name, seed, epochs, training="uniform", searches=SEARCHES):
    """Trains one model (`training`: "uniform" or "mixed") and searches it.

    Scores are test accuracy in % (higher is better), or bits per character
    for the text Transformer (lower is better; its search maximizes minus
    the validation bits per character).
    """
    if name == TRANSFORMER:
        model, x_val, y_val, x_test, y_test, train_s = train_transformer(
            seed, epochs, training
        )
        def score(y_true, y_pred):
            return -char_lm.bits_per_character(np.asarray(y_pred), y_true)
        scale = -1.0
    else:
        model, x_val, y_val, x_test, y_test, train_s = train_classifier(
            name, seed, epochs, training
        )
        score, scale = accuracy, 100.0

    full = model_cost(model, 1.0)["macs"]

    def test(config):
        predictions = keras.ops.convert_to_numpy(model.at_rate(config)(x_test))
        return scale * score(y_test, predictions)

    uniform = {
        r: {"cost_fraction": model_cost(model, r)["macs"] / full, "test": test(r)}
        for r in EIGHTHS
    }
    result = _search_all(model, x_val, y_val, seed, searches, score, scale, test)
    return {
        "train_seconds": train_s,
        "full_macs": full,
        "uniform": {str(r): v for r, v in uniform.items()},
        "searches": result,
    }


def scheduler_of(training, seed, middle):
    """The schedule of a training arm: both run the same passes per step.

    `middle` uniform rates besides the ends run each step: "uniform" runs
    them at random (`middle=2` over four rates is the default "all"),
    "mixed" runs one random configuration in place of one of them.
    """
    if training == "uniform":
        return {"scheduler": "random_min_max", "num_random": middle}
    return {"scheduler": MixedWidthScheduler(
        num_random=middle - 1, pool_size=POOL_SIZE, seed=seed
    )}


def train_classifier(name, seed, epochs, training):
    x_train, y_train, x_test, y_test = load(name, "test")
    x_fit, x_val, y_fit, y_val = train_test_split(
        x_train, y_train, test_size=0.2, stratify=y_train, random_state=seed
    )
    keras.utils.set_random_seed(seed)
    inputs, outputs = network(name)
    # "all" over four rates is random_min_max with both middle rates.
    model = SlicingModel(
        inputs, outputs, rates=RATES, seed=seed, **scheduler_of(training, seed, 2)
    )
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    started = time.perf_counter()
    model.fit(x_fit, y_fit, batch_size=64, epochs=epochs, verbose=0)
    return model, x_val, y_val, x_test, y_test, time.perf_counter() - started


def train_transformer(seed, steps, training):
    """examples/text_transformer.py's model and data, `steps` batches of 32."""
    keras.utils.set_random_seed(seed)
    train_text, val_text, test_text = char_lm.split_text(char_lm.load_text())
    vocab = char_lm.vocabulary(train_text)
    x, y = char_lm.windows(train_text, vocab, SEQ_LEN)
    order = char_lm.training_order(len(x), steps, 32, seed)
    x_val, y_val = char_lm.windows(val_text, vocab, SEQ_LEN)
    x_test, y_test = char_lm.windows(test_text, vocab, SEQ_LEN)
    base = text_transformer.sliced_transformer(
        len(vocab) + 1, SEQ_LEN, rates=RATES, seed=seed
    )
    # As the example (random_min_max, one middle rate, even loss weights).
    model = SlicingModel(
        base.input, base.output, rates=RATES, seed=seed,
        rate_loss_weights=[1.0] * len(RATES), name=base.name,
        **scheduler_of(training, seed, 1),
    )
    char_lm.compile_lm(model, 3e-3)
    started = time.perf_counter()
    model.fit(x[order], y[order], batch_size=32, epochs=1, shuffle=False, verbose=0)
    return model, x_val, y_val, x_test, y_test, time.perf_counter() - started


def _search_all(model, x_val, y_val, seed, searches, score, scale, test):
    results = {}
    kwargs = {"budgets": BUDGETS, "verbose": 0, "metric": score}
    for search in searches:
        if search == "greedy":
            result = search_widths(model, (x_val, y_val), **kwargs)
        elif search == "greedy_eighths":
            result = search_widths(model, (x_val, y_val), rates=EIGHTHS, **kwargs)
        else:
            result = search_widths(
                model, (x_val, y_val), method="random", seed=seed,
                max_evaluations=results["greedy"]["evaluations"], **kwargs,
            )
        picks = {}
        for budget, point in result.budgets.items():
            if point is None:
                picks[str(budget)] = None
                continue
            picks[str(budget)] = {
                "config": point.config,
                "cost_fraction": point.cost_fraction,
                "validation": scale * point.score,
                "test": test(point.config),
            }
        results[search] = {
            "evaluations": result.evaluations,
            "seconds": result.seconds,
            # Every configuration evaluated, with its test accuracy, so that
            # other rules of picking can be checked from this file.
            "points": [
                {"config": p.config, "cost_fraction": p.cost_fraction,
                 "validation": scale * p.score, "test": test(p.config)}
                for p in result.points
            ],
            "front": [
                {"config": p.config, "cost_fraction": p.cost_fraction,
                 "validation": scale * p.score}
                for p in result.front
            ],
            "picks": picks,
        }
    return results


def best_uniform(uniform, budget, rates, sign=1.0):
    fitting = [
        v["test"] for r, v in uniform.items()
        if float(r) in rates and v["cost_fraction"] <= budget + 1e-12
    ]
    return sign * max(sign * v for v in fitting) if fitting else None


def summarize(runs, sign=1.0, margin=1.0, searches=SEARCHES, reference_runs=None):
    """Per budget and search: mean test score and mean gap to baselines.

    A gap is the improvement over the baseline (positive: better, whatever
    the direction of the score). With `reference_runs` (another training of
    the same seeds) the baseline `uniform_training` is that training's best
    trained uniform width.
    """
    baselines = dict(zip(BASELINES, (runs, runs)))
    rates_of = {"uniform": RATES, "uniform_eighths": EIGHTHS}
    if reference_runs is not None:
        baselines["uniform_training"] = reference_runs
        rates_of["uniform_training"] = RATES
    narrowest = max(
        run["uniform"][str(min(RATES))]["cost_fraction"] for run in runs
    )
    rows = {}
    for budget in BUDGETS:
        row = {}
        for search in searches:
            picked = [run["searches"][search]["picks"][str(budget)] for run in runs]
            if any(p is None for p in picked):
                row[search] = None
                continue
            row[search] = {
                "test": float(np.mean([p["test"] for p in picked])),
                "cost_fraction": float(np.mean([p["cost_fraction"] for p in picked])),
            }
        for baseline, base_runs in baselines.items():
            values = [
                best_uniform(run["uniform"], budget, rates_of[baseline], sign)
                for run in base_runs
            ]
            row[baseline] = (
                None if any(v is None for v in values) else float(np.mean(values))
            )
            for search in searches:
                if row[search] is None or row[baseline] is None:
                    continue
                gaps = [
                    sign * (run["searches"][search]["picks"][str(budget)]["test"] - v)
                    for run, v in zip(runs, values)
                ]
                row[search][f"gap_{baseline}"] = float(np.mean(gaps))
                row[search][f"gap_{baseline}_stderr"] = float(
                    np.std(gaps, ddof=1) / np.sqrt(len(gaps))
                ) if len(gaps) > 1 else None
        rows[str(budget)] = row
    goal = {}
    for search in searches:
        for baseline in baselines:
            gaps = {
                b: rows[str(b)][search][f"gap_{baseline}"]
                for b in BUDGETS
                if b >= narrowest - 1e-12 and rows[str(b)][search] is not None
                and f"gap_{baseline}" in rows[str(b)][search]
            }
            goal[f"{search}_vs_{baseline}"] = {
                "never_worse": all(g >= 0 for g in gaps.values()),
                "worst_gap": min(gaps.values()),
                "best_gap_10_40": max(
                    (g for b, g in gaps.items() if 0.1 <= b <= 0.4), default=None
                ),
                "met": all(g >= 0 for g in gaps.values()) and any(
                    g >= margin for b, g in gaps.items() if 0.1 <= b <= 0.4
                ),
            }
    return {"narrowest_cost_fraction": narrowest, "budgets": rows, "goal": goal}


def report(name, result):
    summary = result["summary"]
    rows = []
    for budget in BUDGETS:
        row = summary["budgets"][str(budget)]

        def cell(value):
            return "-" if value is None else f"{value:.1f}"

        rows.append([
            f"{budget:g}",
            cell(row["uniform"]),
            cell(row["uniform_eighths"]),
            *[
                "-" if row[s] is None else
                f"{row[s]['test']:.1f} ({row[s].get('gap_uniform', float('nan')):+.1f})"
                for s in SEARCHES
            ],
        ])
    common.print_table(
        f"{name}: test accuracy (%) at each MAC budget, mean of "
        f"{len(result['runs'])} seeds (gap to the best fitting trained uniform width)",
        ["budget", "uniform", "uniform k/8", *SEARCHES],
        rows,
    )
    timing = [
        [s,
         f"{np.mean([r['searches'][s]['evaluations'] for r in result['runs']]):.0f}",
         f"{np.median([r['searches'][s]['seconds'] for r in result['runs']]):.1f}"]
        for s in SEARCHES
    ]
    common.print_table(f"{name}: search cost", ["search", "evaluations", "median s"],
                       timing)
    for key, goal in summary["goal"].items():
        print(f"  goal {key}: met={goal['met']} worst gap {goal['worst_gap']:+.2f}, "
              f"best gap in 10-40% {goal['best_gap_10_40']}")


def markdown(results):
    """The docs tables of a result file: one per data set."""
    lines = []
    for name, result in results["datasets"].items():
        summary = result["summary"]
        lines += [
            f"**{name}** ({len(result['runs'])} seeds, {result['epochs']} epochs; "
            "test accuracy %, mean over seeds; in brackets the gap to the best "
            "trained uniform width within the budget):",
            "",
            "| MAC budget | uniform (trained) | uniform (k/8) | "
            + " | ".join(SEARCHES) + " |",
            "|---" * (3 + len(SEARCHES)) + "|",
        ]
        for budget in BUDGETS:
            row = summary["budgets"][str(budget)]
            cells = [f"{budget:g}"] + [
                "-" if row[b] is None else f"{row[b]:.1f}" for b in BASELINES
            ]
            for search in SEARCHES:
                if row[search] is None:
                    cells.append("-")
                    continue
                gap = row[search].get("gap_uniform")
                cells.append(
                    f"{row[search]['test']:.1f}"
                    + ("" if gap is None else f" ({gap:+.1f})")
                )
            lines.append("| " + " | ".join(cells) + " |")
        times = ", ".join(
            f"{s} {np.mean([r['searches'][s]['evaluations'] for r in result['runs']]):.0f} "
            f"configurations in {np.median([r['searches'][s]['seconds'] for r in result['runs']]):.1f} s"
            for s in SEARCHES
        )
        lines += ["", f"Search time (median): {times}.", ""]
        for key, goal in summary["goal"].items():
            best = goal["best_gap_10_40"]
            lines.append(
                f"- {key.replace('_vs_', ' against ')}: goal "
                f"{'met' if goal['met'] else 'NOT met'} (worst gap "
                f"{goal['worst_gap']:+.1f} points from the narrowest trained "
                "width up; best gap in 10-40% of the cost "
                f"{'-' if best is None else format(best, '+.1f')})"
            )
        lines.append("")
    return "\n".join(lines)


def compare_trainings(name, seeds, epochs, searches, results, output, first_seed=0):
    """Uniform and mixed-width training of the same seeds, interleaved."""
    runs = {t: [] for t in TRAININGS}
    entry = results["datasets"][name] = {
        ("steps" if name == TRANSFORMER else "epochs"): epochs,
        "score": "test bits per character (lower is better)" if name == TRANSFORMER
        else "test accuracy % (higher is better)",
        "trainings": {},
    }
    for seed in range(first_seed, first_seed + seeds):
        for training in TRAININGS:
            runs[training].append(
                train_and_search(name, seed, epochs, training, searches)
            )
            print(f"{name} seed {seed} {training} done "
                  f"({runs[training][-1]['train_seconds']:.0f} s)", flush=True)
        summarize_trainings(name, entry, runs, searches)
        common.write_json("width_search_training", results, output)
    print(training_markdown({"datasets": {name: entry}}))


def summarize_trainings(name, entry, runs, searches=("greedy",)):
    middle = 1 if name == TRANSFORMER else 2
    if name == TRANSFORMER:
        entry["note"] = (
            f"{entry['steps']} steps of 32 windows, shortened from the 3,000 of "
            "examples/text_transformer.py to fit a shared 2-core machine"
        )
    entry["schedules"] = {
        "uniform": f"random_min_max, num_random={middle}",
        "mixed": f"MixedWidthScheduler(num_random={middle - 1}, num_configs=1, "
        f"pool_size={POOL_SIZE}, seed=seed)",
    }
    for training in TRAININGS:
        entry["trainings"][training] = {
            "runs": runs[training],
            "summary": summarize(
                runs[training], sign_of(name), MARGIN.get(name, 1.0), searches,
                reference_runs=runs["uniform"] if training == "mixed" else None,
            ),
        }


def _cell(value, gap=None, digits=1):
    if value is None:
        return "-"
    text = f"{value:.{digits}f}"
    return text if gap is None else f"{text} ({gap:+.{digits}f})"


def training_markdown(results):
    """The docs tables of a comparison of trainings: one per data set."""
    lines = []
    for name, result in results["datasets"].items():
        uniform = result["trainings"]["uniform"]
        mixed = result["trainings"]["mixed"]
        digits = 3 if name == TRANSFORMER else 1
        seeds = len(uniform["runs"])
        schedule = (f"{result['steps']} steps" if "steps" in result
                    else f"{result['epochs']} epochs")
        lines += [
            f"**{name}** ({seeds} seeds, {schedule}; {result['score']}, mean "
            "over seeds; in brackets the improvement over the best uniform width "
            "of uniform training within the budget):",
            "",
            "| MAC budget | uniform training: uniform widths | uniform training: "
            "greedy | mixed training: uniform widths | mixed training: greedy |",
            "|---|---|---|---|---|",
        ]
        for budget in BUDGETS:
            u = uniform["summary"]["budgets"][str(budget)]
            m = mixed["summary"]["budgets"][str(budget)]
            lines.append("| " + " | ".join([
                f"{budget:g}",
                _cell(u["uniform"], digits=digits),
                _cell(u["greedy"] and u["greedy"]["test"],
                      u["greedy"] and u["greedy"].get("gap_uniform"), digits),
                _cell(m["uniform"], digits=digits),
                _cell(m["greedy"] and m["greedy"]["test"],
                      m["greedy"] and m["greedy"].get("gap_uniform_training"), digits),
            ]) + " |")
        times = ", ".join(
            f"{t} training {np.median([r['train_seconds'] for r in result['trainings'][t]['runs']]):.0f} s"
            f" + greedy search {np.median([r['searches']['greedy']['seconds'] for r in result['trainings'][t]['runs']]):.0f} s"
            for t in TRAININGS
        )
        lines += ["", f"Median wall-clock times: {times}.", ""]
        for label, summary, key in (
            ("uniform training, greedy against its uniform widths", uniform, "greedy_vs_uniform"),
            ("mixed training, greedy against the uniform widths of uniform training",
             mixed, "greedy_vs_uniform_training"),
            ("mixed training, greedy against its own uniform widths", mixed,
             "greedy_vs_uniform"),
        ):
            goal = summary["summary"]["goal"][key]
            best = goal["best_gap_10_40"]
            lines.append(
                f"- {label}: goal {'met' if goal['met'] else 'NOT met'} (worst gap "
                f"{goal['worst_gap']:+.{digits}f} from the narrowest trained width up; "
                f"best gap in 10-40% of the cost "
                f"{'-' if best is None else format(best, f'+.{digits}f')})"
            )
        lines.append("")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits,mnist1d")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=0,
                        help="0: 25 digits, 15 MNIST-1D (benchmarks/accuracy.py)")
    parser.add_argument("--output", default=None)
    parser.add_argument("--merge", default=None,
                        help="comma-separated result files of data sets run apart")
    parser.add_argument("--markdown", default=None,
                        help="print the docs tables of this result file and exit")
    parser.add_argument("--trainings", action="store_true",
                        help="compare uniform with mixed-width training "
                        "(writes width_search_training.json)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="first seed of --trainings, to split seeds over processes")
    parser.add_argument("--searches", default="greedy",
                        help="searches of --trainings, of " + ",".join(SEARCHES))
    args = parser.parse_args()
    if args.markdown:
        with open(args.markdown) as handle:
            results = json.load(handle)
        first = next(iter(results["datasets"].values()))
        print(training_markdown(results) if "trainings" in first else markdown(results))
        return
    if args.trainings:
        results = {
            "machine": {**common.machine_facts(),
                        "note": "shared 2-core machine; times are wall-clock"},
            "rates": list(RATES),
            "budgets": list(BUDGETS),
            "validation": "20% of the training split, stratified, seed per run "
            "(text Transformer: the example's validation text)",
            "datasets": {},
        }
        for name in args.datasets.split(","):
            epochs = args.epochs or (
                TRANSFORMER_STEPS if name == TRANSFORMER else EPOCHS[name]
            )
            compare_trainings(name, args.seeds, epochs,
                              tuple(args.searches.split(",")), results, args.output,
                              args.first_seed)
        return
    if args.merge:
        merged = None
        for path in args.merge.split(","):
            with open(path) as handle:
                part = json.load(handle)
            if merged is None:
                merged = part
                continue
            for name, entry in part["datasets"].items():
                held = merged["datasets"].get(name)
                if held is None or "trainings" not in entry:
                    merged["datasets"][name] = entry
                    continue
                # Seeds of one data set run apart (--first-seed): runs joined.
                runs = {t: held["trainings"][t]["runs"] + entry["trainings"][t]["runs"]
                        for t in TRAININGS}
                summarize_trainings(name, held, runs)
        common.write_json("width_search", merged, args.output)
        return
    results = {
        "machine": {**common.machine_facts(),
                    "note": "shared 2-core machine; times are wall-clock"},
        "rates": list(RATES),
        "budgets": list(BUDGETS),
        "validation": "20% of the training split, stratified, seed per run",
        "datasets": {},
    }
    for name in args.datasets.split(","):
        epochs = args.epochs or EPOCHS[name]
        runs = []
        for seed in range(args.seeds):
            runs.append(train_and_search(name, seed, epochs))
            print(f"{name} seed {seed} done", flush=True)
        results["datasets"][name] = {
            "epochs": epochs, "runs": runs, "summary": summarize(runs),
        }
        report(name, results["datasets"][name])
        common.write_json("width_search", results, args.output)


if __name__ == "__main__":
    main()
