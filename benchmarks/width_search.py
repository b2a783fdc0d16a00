"""Searched width configurations against uniform widths at equal cost.

Prints one table per data set and writes benchmarks/results/width_search.json
(or --output).

    python benchmarks/width_search.py [--datasets=digits,mnist1d] [--seeds=3]
    python benchmarks/width_search.py --merge=a.json,b.json  # data sets run apart
    python benchmarks/width_search.py --markdown=benchmarks/results/width_search.json

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
from keras_slicing import SlicingModel  # noqa: E402
from keras_slicing import model_cost  # noqa: E402
from keras_slicing import search_widths  # noqa: E402
from keras_slicing.search import accuracy  # noqa: E402

BUDGETS = (0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5,
           0.6, 0.7, 0.8, 0.9, 1.0)
EIGHTHS = tuple(k / 8 for k in range(8, 0, -1))
SEARCHES = ("greedy", "greedy_eighths", "random")
BASELINES = ("uniform", "uniform_eighths")


def train_and_search(name, seed, epochs):
    x_train, y_train, x_test, y_test = load(name, "test")
    x_fit, x_val, y_fit, y_val = train_test_split(
        x_train, y_train, test_size=0.2, stratify=y_train, random_state=seed
    )
    keras.utils.set_random_seed(seed)
    inputs, outputs = network(name)
    model = SlicingModel(inputs, outputs, rates=RATES, seed=seed)
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    started = time.perf_counter()
    model.fit(x_fit, y_fit, batch_size=64, epochs=epochs, verbose=0)
    train_s = time.perf_counter() - started

    full = model_cost(model, 1.0)["macs"]

    def test(config):
        predictions = keras.ops.convert_to_numpy(model.at_rate(config)(x_test))
        return 100.0 * accuracy(y_test, predictions)

    uniform = {
        r: {"cost_fraction": model_cost(model, r)["macs"] / full, "test": test(r)}
        for r in EIGHTHS
    }
    searches = {}
    kwargs = {"budgets": BUDGETS, "verbose": 0}
    for search in SEARCHES:
        if search == "greedy":
            result = search_widths(model, (x_val, y_val), **kwargs)
        elif search == "greedy_eighths":
            result = search_widths(model, (x_val, y_val), rates=EIGHTHS, **kwargs)
        else:
            result = search_widths(
                model, (x_val, y_val), method="random", seed=seed,
                max_evaluations=searches["greedy"]["evaluations"], **kwargs,
            )
        picks = {}
        for budget, point in result.budgets.items():
            if point is None:
                picks[str(budget)] = None
                continue
            picks[str(budget)] = {
                "config": point.config,
                "cost_fraction": point.cost_fraction,
                "validation": 100.0 * point.score,
                "test": test(point.config),
            }
        searches[search] = {
            "evaluations": result.evaluations,
            "seconds": result.seconds,
            # Every configuration evaluated, with its test accuracy, so that
            # other rules of picking can be checked from this file.
            "points": [
                {"config": p.config, "cost_fraction": p.cost_fraction,
                 "validation": 100.0 * p.score, "test": test(p.config)}
                for p in result.points
            ],
            "front": [
                {"config": p.config, "cost_fraction": p.cost_fraction,
                 "validation": 100.0 * p.score}
                for p in result.front
            ],
            "picks": picks,
        }
    return {
        "train_seconds": train_s,
        "full_macs": full,
        "uniform": {str(r): v for r, v in uniform.items()},
        "searches": searches,
    }


def best_uniform(uniform, budget, rates):
    fitting = [
        v["test"] for r, v in uniform.items()
        if float(r) in rates and v["cost_fraction"] <= budget + 1e-12
    ]
    return max(fitting) if fitting else None


def summarize(runs):
    """Per budget and search: mean test accuracy and mean gap to baselines."""
    narrowest = max(
        run["uniform"][str(min(RATES))]["cost_fraction"] for run in runs
    )
    rows = {}
    for budget in BUDGETS:
        row = {}
        for search in SEARCHES:
            picked = [run["searches"][search]["picks"][str(budget)] for run in runs]
            if any(p is None for p in picked):
                row[search] = None
                continue
            row[search] = {
                "test": float(np.mean([p["test"] for p in picked])),
                "cost_fraction": float(np.mean([p["cost_fraction"] for p in picked])),
            }
        for baseline, rates in (("uniform", RATES), ("uniform_eighths", EIGHTHS)):
            values = [best_uniform(run["uniform"], budget, rates) for run in runs]
            row[baseline] = (
                None if any(v is None for v in values) else float(np.mean(values))
            )
            for search in SEARCHES:
                if row[search] is None or row[baseline] is None:
                    continue
                gaps = [
                    run["searches"][search]["picks"][str(budget)]["test"] - v
                    for run, v in zip(runs, values)
                ]
                row[search][f"gap_{baseline}"] = float(np.mean(gaps))
                row[search][f"gap_{baseline}_stderr"] = float(
                    np.std(gaps, ddof=1) / np.sqrt(len(gaps))
                ) if len(gaps) > 1 else None
        rows[str(budget)] = row
    goal = {}
    for search in SEARCHES:
        for baseline in BASELINES:
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
                    g >= 1.0 for b, g in gaps.items() if 0.1 <= b <= 0.4
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
    args = parser.parse_args()
    if args.markdown:
        with open(args.markdown) as handle:
            print(markdown(json.load(handle)))
        return
    if args.merge:
        merged = None
        for path in args.merge.split(","):
            with open(path) as handle:
                part = json.load(handle)
            if merged is None:
                merged = part
            else:
                merged["datasets"].update(part["datasets"])
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
