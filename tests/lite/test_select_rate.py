import pytest

from keras_slicing_lite import load_bundle
from tests.lite.conftest import toy_latency_ms


def _macs(bundle):
    return {rate: bundle.rate_entry(rate)["macs"] for rate in bundle.rates}


def test_widest_rate_within_latency_budget(bundle_dir, toy_profile):
    budget = toy_latency_ms(0.75, 4)  # 3.75 ms: 1.0 costs 5 ms at batch 4
    rate = load_bundle(bundle_dir).select_rate(
        latency_budget_ms=budget, batch_size=4, profile=toy_profile
    )
    assert rate == 0.75


def test_generous_budget_gives_full_width(bundle_dir, toy_profile):
    rate = load_bundle(bundle_dir).select_rate(latency_budget_ms=1e3, profile=toy_profile)
    assert rate == 1.0


def test_widest_rate_within_macs_budget(bundle_dir):
    bundle = load_bundle(bundle_dir)
    macs = _macs(bundle)
    assert bundle.select_rate(macs_budget=macs[0.5]) == 0.5
    assert bundle.select_rate(macs_budget=macs[0.5] - 1) == 0.25


def test_both_budgets_must_hold(bundle_dir, toy_profile):
    bundle = load_bundle(bundle_dir)
    rate = bundle.select_rate(
        latency_budget_ms=toy_latency_ms(1.0, 1),
        macs_budget=_macs(bundle)[0.75],
        profile=toy_profile,
    )
    assert rate == 0.75


def test_no_rate_fits_raises_naming_the_budget(bundle_dir, toy_profile):
    message = r"no rate fits the budget\. Received: latency_budget_ms=0\.1"
    with pytest.raises(ValueError, match=message):
        load_bundle(bundle_dir).select_rate(latency_budget_ms=0.1, profile=toy_profile)


def test_fallback_returns_narrowest_when_nothing_fits(bundle_dir, toy_profile):
    rate = load_bundle(bundle_dir).select_rate(
        latency_budget_ms=0.1, profile=toy_profile, fallback_to_narrowest=True
    )
    assert rate == 0.25


def test_statistic_chooses_the_profile_column(bundle_dir):
    from keras_slicing_lite import LatencyProfile

    profile = LatencyProfile(
        {
            1.0: {1: {"p50": 1.0, "p90": 3.0, "mean": 1.5}},
            0.5: {1: {"p50": 0.5, "p90": 0.6, "mean": 0.5}},
            0.75: {1: 0.8},
            0.25: {1: 0.2},
        }
    )
    bundle = load_bundle(bundle_dir)
    assert bundle.select_rate(latency_budget_ms=2.0, profile=profile, statistic="p50") == 1.0
    assert bundle.select_rate(latency_budget_ms=2.0, profile=profile) == 0.75


def test_no_budget_is_rejected(bundle_dir):
    with pytest.raises(ValueError, match="give latency_budget_ms, macs_budget or both"):
        load_bundle(bundle_dir).select_rate()


@pytest.mark.parametrize("budget", [-1, "5", True])
def test_bad_budget_is_rejected(bundle_dir, toy_profile, budget):
    with pytest.raises(ValueError, match="latency_budget_ms must be a number"):
        load_bundle(bundle_dir).select_rate(latency_budget_ms=budget, profile=toy_profile)
