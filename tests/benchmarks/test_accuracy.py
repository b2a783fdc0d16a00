"""The statistics and splits of `benchmarks/accuracy.py`."""

import numpy as np
import pytest
from absl import app

from benchmarks import accuracy


def test_folds_hold_out_every_training_example_once():
    x_train, y_train, _, _ = accuracy.load("digits", "test")
    held_out = []
    for seed in range(accuracy.FOLDS):
        x_fit, y_fit, x_eval, y_eval = accuracy.load("digits", "folds", seed)
        assert len(x_fit) + len(x_eval) == len(x_train)
        # Stratified: every class in each held-out fold, in proportion.
        counts = np.bincount(y_eval, minlength=10) / len(y_eval)
        np.testing.assert_allclose(
            counts, np.bincount(y_train, minlength=10) / len(y_train), atol=0.01
        )
        held_out.append(x_eval.reshape(len(x_eval), -1))
    held_out = np.concatenate(held_out)
    assert len(held_out) == len(x_train)
    assert len(np.unique(held_out, axis=0)) == len(
        np.unique(x_train.reshape(len(x_train), -1), axis=0)
    )
    # Seed 5 reports fold 0 again.
    np.testing.assert_array_equal(
        accuracy.load("digits", "folds", 5)[2], accuracy.load("digits", "folds", 0)[2]
    )


def test_difference_pairs_runs_of_the_same_seeds():
    alone = [0.90, 0.80, 0.95]
    sliced = [0.91, 0.82, 0.94]
    diffs = np.subtract(sliced, alone)
    paired = accuracy.difference(sliced, alone, paired=True)
    assert paired == (
        f"{100 * diffs.mean():+.1f} ± {100 * diffs.std(ddof=1) / np.sqrt(3):.1f}"
    )
    independent = np.sqrt(np.var(sliced, ddof=1) / 3 + np.var(alone, ddof=1) / 3)
    assert accuracy.difference(sliced, alone) == (
        f"{100 * diffs.mean():+.1f} ± {100 * independent:.1f}"
    )


def _run(kinds, seeds, value):
    return {
        "split": "folds",
        "datasets": {"digits": {
            "seeds": {k: list(seeds) for k in kinds},
            "kinds": {k: None for k in kinds},
            "step_cost": {k: 1.0 for k in kinds},
            "seconds": 1.0,
            "accuracy": {k: {str(r): [value] * len(seeds) for r in accuracy.RATES}
                         for k in kinds},
            "fit_accuracy": {
                k: {str(r): [value + 0.05] * len(seeds) for r in accuracy.RATES}
                for k in kinds
            },
        }},
    }


def test_merge_keeps_the_seeds_of_each_kind():
    first = _run(["alone", "recipe"], [0, 1], 0.9)
    old = _run(["alone"], [2], 0.8)
    # Written before seeds and training accuracies were recorded.
    del old["datasets"]["digits"]["seeds"], old["datasets"]["digits"]["fit_accuracy"]
    merged = accuracy.merge([first, _run(["recipe"], [2], 0.7), old])
    per_set = merged["datasets"]["digits"]
    assert per_set["seeds"] == {"alone": [0, 1, None], "recipe": [0, 1, 2]}
    assert per_set["accuracy"]["recipe"]["1.0"] == [0.9, 0.9, 0.7]
    assert per_set["accuracy"]["alone"]["1.0"] == [0.9, 0.9, 0.8]
    np.testing.assert_allclose(per_set["fit_accuracy"]["recipe"]["1.0"], [0.95, 0.95, 0.75])
    assert "alone" not in per_set["fit_accuracy"]  # incomplete: dropped
    assert not accuracy._same_seeds(per_set, "recipe", "alone")
    merged = accuracy.merge([first, _run(["alone", "recipe"], [2], 0.7)])
    assert accuracy._same_seeds(merged["datasets"]["digits"], "recipe", "alone")


def test_merge_refuses_runs_of_different_splits():
    other = _run(["alone"], [0], 0.9)
    other["split"] = "test"
    with pytest.raises(app.UsageError, match="different splits"):
        accuracy.merge([_run(["alone"], [0], 0.9), other])
