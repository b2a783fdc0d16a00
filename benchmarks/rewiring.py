"""Which channel rewiring gives the best narrow widths right after slice_model?

Trains a plain Keras CNN with batch normalization to convergence, converts
it with `keras_slicing.slice_model` under each `rewire` option (none, "l1",
"bn", "taylor"), and measures the test accuracy of every width with no
training at all: once with the full network's batch-norm statistics copied
to every width (as converted), once after `calibrate_batchnorm` on the
training data (each width's own statistics, no weight changes). Two data
sets: scikit-learn's digits (2-D CNN; the default is chosen here) and
MNIST-1D (1-D CNN; the confirmation on data the choice was not made on).
Mean and standard error over seeds.

    python benchmarks/rewiring.py [--seeds=3] [--epochs=30]
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_slicing  # noqa: E402
from benchmarks import common  # noqa: E402

REWIRES = (None, "l1", "bn", "taylor")
RATES = (1.0, 0.75, 0.5, 0.25)
K = keras.layers


def digits_data(seed):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    return train_test_split(x, digits.target, test_size=0.25,
                            stratify=digits.target, random_state=seed)


def mnist1d_data(seed):
    """The standard MNIST-1D split (generated offline); seeds vary the weights."""
    from mnist1d.data import get_dataset_args
    from mnist1d.data import make_dataset

    data = make_dataset(get_dataset_args())
    return (data["x"].astype("float32")[..., None], data["x_test"].astype("float32")[..., None],
            data["y"], data["y_test"])


def digits_cnn():
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        K.Conv2D(32, 3, padding="same", use_bias=False), K.BatchNormalization(), K.ReLU(),
        K.Conv2D(64, 3, strides=2, padding="same", use_bias=False), K.BatchNormalization(),
        K.ReLU(),
        K.GlobalAveragePooling2D(),
        K.Dense(10),
    ], name="digits_cnn")


def mnist1d_cnn():
    return keras.Sequential([
        keras.Input((40, 1)),
        K.Conv1D(32, 5, padding="same", use_bias=False), K.BatchNormalization(), K.ReLU(),
        K.Conv1D(64, 5, strides=2, padding="same", use_bias=False), K.BatchNormalization(),
        K.ReLU(),
        K.Conv1D(64, 3, padding="same", use_bias=False), K.BatchNormalization(), K.ReLU(),
        K.GlobalAveragePooling1D(),
        K.Dense(10),
    ], name="mnist1d_cnn")


TASKS = {"digits": (digits_data, digits_cnn), "mnist1d": (mnist1d_data, mnist1d_cnn)}


def accuracy(model, x, y):
    logits = model.predict(x, verbose=0, batch_size=512)
    return float(np.mean(np.argmax(logits, -1) == y))


def run_task(task, seeds, epochs):
    make_data, make_model = TASKS[task]
    runs = []
    for seed in range(seeds):
        keras.utils.set_random_seed(seed)
        x_train, x_test, y_train, y_test = make_data(seed)
        plain = make_model()
        plain.compile(keras.optimizers.Adam(3e-3),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        plain.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0)
        run = {"seed": seed, "plain": accuracy(plain, x_test, y_test)}
        for rewire in REWIRES:
            start = time.perf_counter()
            sliced = keras_slicing.slice_model(
                plain, rewire=rewire, data=(x_train[:512], y_train[:512])
            )
            seconds = time.perf_counter() - start
            raw = {r: accuracy(sliced.at_rate(r), x_test, y_test) for r in RATES}
            keras_slicing.calibrate_batchnorm(sliced, x_train)
            calibrated = {r: accuracy(sliced.at_rate(r), x_test, y_test) for r in RATES}
            run[str(rewire)] = {"as_converted": raw, "calibrated": calibrated,
                                "convert_seconds": seconds}
            print(f"{task} seed {seed} rewire={rewire}: calibrated "
                  + " ".join(f"{r:g}:{calibrated[r]:.3f}" for r in RATES), flush=True)
        runs.append(run)
    return runs


def summarize(runs):
    """`{rewire: {stats kind: {rate: (mean, s.e.)}}}` over seeds."""
    summary = {}
    for rewire in REWIRES:
        summary[str(rewire)] = {}
        for kind in ("as_converted", "calibrated"):
            summary[str(rewire)][kind] = {}
            for rate in RATES:
                values = [run[str(rewire)][kind][rate] for run in runs]
                se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
                summary[str(rewire)][kind][rate] = (statistics.mean(values), se)
    return summary


def narrow_mean(summary, rewire, kind):
    return statistics.mean(summary[str(rewire)][kind][r][0] for r in RATES[1:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--tasks", default="digits,mnist1d")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    payload = {
        "machine": {**common.machine_facts(),
                    "note": "shared 2-core machine; accuracies do not depend on it"},
        "settings": {"seeds": args.seeds, "epochs": args.epochs, "rates": RATES,
                     "optimizer": "Adam 3e-3, batch 64", "taylor_examples": 512},
        "tasks": {},
    }
    for task in args.tasks.split(","):
        runs = run_task(task, args.seeds, args.epochs)
        summary = summarize(runs)
        payload["tasks"][task] = {
            "plain_accuracy": statistics.mean(run["plain"] for run in runs),
            "summary": {
                rewire: {kind: {format(r, "g"): v for r, v in rates.items()}
                         for kind, rates in kinds.items()}
                for rewire, kinds in summary.items()
            },
            "narrow_mean": {
                str(rewire): {kind: narrow_mean(summary, rewire, kind)
                              for kind in ("as_converted", "calibrated")}
                for rewire in REWIRES
            },
            "runs": [
                {k: ({kind: ({format(r, "g"): a for r, a in v.items()}
                             if isinstance(v, dict) else v)
                      for kind, v in val.items()} if isinstance(val, dict) else val)
                 for k, val in run.items()}
                for run in runs
            ],
        }
        for kind in ("as_converted", "calibrated"):
            rows = []
            for rewire in REWIRES:
                cells = [f"{m:.3f}±{s:.3f}" for m, s in
                         (summary[str(rewire)][kind][r] for r in RATES)]
                rows.append([str(rewire), *cells, f"{narrow_mean(summary, rewire, kind):.3f}"])
            common.print_table(
                f"{task}: test accuracy right after slice_model ({kind} statistics), "
                f"plain model {payload['tasks'][task]['plain_accuracy']:.3f}",
                ["rewire", *[f"r={r:g}" for r in RATES], "mean r<1"], rows,
            )
    common.write_json("rewiring", payload, args.output)


if __name__ == "__main__":
    main()
