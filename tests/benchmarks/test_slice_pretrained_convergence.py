"""The convergence rule of `benchmarks/slice_pretrained_convergence.py`."""

from benchmarks import slice_pretrained_convergence as bench

CHECKPOINTS = (10, 15, 20, 30, 40, 60, 80)


def _curve(values):
    return dict(zip((str(e) for e in CHECKPOINTS), values))


def test_picks_the_first_epochs_whose_doubling_gains_less_than_the_threshold():
    means = {
        "pretrained": _curve([90.0, 91.0, 92.0, 92.1, 92.2, 92.2, 92.3]),
        # Gaining 0.5 from 20 to 40 epochs, 0.4 from 30 to 60, 0.2 from 40 to 80.
        "0.25": _curve([80.0, 84.0, 87.0, 87.3, 87.5, 87.7, 87.7]),
    }
    chosen, gains = bench.converged_epochs(means, CHECKPOINTS)
    assert chosen == 40
    assert set(gains) == {"10", "15", "20", "30", "40"}  # 60 and 80: no doubling


def test_a_late_gain_at_any_width_rules_a_candidate_out():
    flat = _curve([95.0] * len(CHECKPOINTS))
    late = _curve([95.0, 95.0, 95.0, 95.0, 95.0, 95.0, 95.4])  # +0.4 at 80 epochs
    chosen, _ = bench.converged_epochs({"1.0": flat, "0.25": late}, CHECKPOINTS)
    assert chosen == 10  # 80 is beyond 2 x 10..30; it rules out 40 only
    chosen, _ = bench.converged_epochs(
        {"1.0": flat, "0.25": _curve([95.0, 95.5, 96.0, 96.5, 97.0, 97.5, 98.0])},
        CHECKPOINTS,
    )
    assert chosen is None
