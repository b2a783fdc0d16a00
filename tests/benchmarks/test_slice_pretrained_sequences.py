"""The merging, the goals and the recipes of `benchmarks/slice_pretrained_sequences.py`."""

import keras
import numpy as np
import pytest

import keras_slicing
from benchmarks import slice_pretrained_sequences as bench

RATES = [str(rate) for rate in bench.RATES]


def _widths(start):
    return {rate: start + i for i, rate in enumerate(RATES)}  # narrower: worse


def _full_run(rng):
    return {
        "pretrained": 2.0 + rng.normal(0, 0.01),
        "converted": {"None": _widths(3.0)},
        "finetune": {"default": {f: _widths(2.0 + rng.normal(0, 0.1))
                                 for f in ("0.1", "0.25", "0.5")}},
        "scratch": _widths(2.5 + rng.normal(0, 0.1)),
        "finetune_default_seconds": 1.0,
    }


def _part(recipes, runs, steps=800):
    return {"settings": {"recipes": recipes, "steps": steps}, "runs": {"char_lm": runs}}


def test_merge_adds_finetune_only_recipes_to_the_matching_seeds():
    rng = np.random.default_rng(0)
    full = {"0": _full_run(rng), "1": _full_run(rng)}
    extra = {seed: {"pretrained": 9.0, "finetune": {"high_lr": {
        f: _widths(1.0) for f in ("0.1", "0.25", "0.5")}}} for seed in full}
    merged = bench.merge([_part(["default"], full), _part(["high_lr"], extra)])
    for seed, run in merged["runs"]["char_lm"].items():
        assert set(run["finetune"]) == {"default", "high_lr"}
        assert run["pretrained"] == full[seed]["pretrained"]  # the full run's
        assert run["scratch"] == full[seed]["scratch"]
    assert merged["settings"]["recipes"] == ["default", "high_lr"]


def test_merge_joins_stages_run_apart_in_either_order():
    rng = np.random.default_rng(2)
    full = _full_run(rng)
    scratch = {"scratch": full["scratch"], "scratch_seconds": 5.0}
    rest = {k: v for k, v in full.items() if k != "scratch"}
    for parts in ([rest, scratch], [scratch, rest]):
        merged = bench.merge([_part(["default"], {"0": p}) for p in parts])
        assert merged["runs"]["char_lm"]["0"] == {**full, "scratch_seconds": 5.0}


def test_merge_refuses_parts_of_different_schedules():
    rng = np.random.default_rng(3)
    parts = [_part(["default"], {"0": _full_run(rng)}, steps) for steps in (800, 3000)]
    with pytest.raises(ValueError, match="steps"):
        bench.merge(parts)


def test_a_fine_tuning_run_still_going_is_left_out_of_the_means():
    rng = np.random.default_rng(4)
    runs = {str(seed): _full_run(rng) for seed in range(2)}
    del runs["1"]["finetune_default_seconds"]  # its seconds are written when it ends
    summary = bench.summarize(runs)
    assert "default" not in summary["goals"]
    assert set(summary["screening"]["default"]) == {"0"}


def test_goals_pair_each_seed_with_its_own_scratch_run():
    rng = np.random.default_rng(1)
    runs = {str(seed): _full_run(rng) for seed in range(3)}
    goal = bench.summarize(runs)["goals"]["default"]
    gaps = [runs[s]["finetune"]["default"]["0.25"]["0.25"] - runs[s]["scratch"]["0.25"]
            for s in runs]
    mean, se = goal["finetuned_minus_scratch"]["0.25"]["0.25"]
    np.testing.assert_allclose(mean, np.mean(gaps))
    np.testing.assert_allclose(se, np.std(gaps, ddof=1) / np.sqrt(3))
    assert goal["within_margin_at_25%"]["0.25"] == (np.mean(gaps) <= bench.MARGIN)


@pytest.mark.parametrize("recipe", ["teacher_high_lr", "teacher_mix_high_lr",
                                    "teacher_mix_t2_high_lr", "inplace_high_lr"])
def test_a_distillation_recipe_is_high_lr_with_its_label_loss_weights(recipe):
    share, options = bench.RECIPES[recipe]
    assert share == bench.RECIPES["high_lr"][0]
    # SlicingModel's default on labels, 3 - 2r, which distillation would make even.
    np.testing.assert_allclose(options["rate_loss_weights"],
                               [3 - 2 * rate for rate in bench.RATES])


def test_a_teacher_recipe_distills_from_the_pretrained_model_it_is_given():
    def plain():
        return keras.Sequential([keras.Input((4,)), keras.layers.Dense(8),
                                 keras.layers.Dense(3)])

    pretrained, student = plain(), plain()
    sliced = keras_slicing.slice_model(
        student, rates=bench.RATES,
        **bench.recipe_kwargs("teacher_mix_high_lr", pretrained))
    assert sliced.distillation is pretrained
    assert sliced.distillation_weight == 0.5
