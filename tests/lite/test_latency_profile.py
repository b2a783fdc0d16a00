import json
import os

import pytest

from keras_slicing_lite import LatencyProfile
from keras_slicing_lite import load_bundle
from keras_slicing_lite import latency_profile as latency_profile_lib
from keras_slicing_lite import profiling
from tests.lite.conftest import RATES
from tests.lite.conftest import toy_latency_ms


def test_measured_batch_size_returns_its_value(toy_profile):
    assert toy_profile.latency_ms(0.5, 4) == toy_latency_ms(0.5, 4)


def test_unmeasured_batch_size_is_interpolated_linearly(toy_profile):
    low, high = toy_latency_ms(1.0, 4), toy_latency_ms(1.0, 8)
    assert toy_profile.latency_ms(1.0, 6) == pytest.approx((low + high) / 2)


def test_batch_beyond_largest_scales_per_example(toy_profile):
    assert toy_profile.latency_ms(1.0, 16) == pytest.approx(2 * toy_latency_ms(1.0, 8))


def test_profile_round_trips_through_json(toy_profile, tmp_path):
    path = tmp_path / "profile.json"
    toy_profile.save(path)
    loaded = LatencyProfile.load(path)
    assert loaded.to_dict() == toy_profile.to_dict()


def test_unprofiled_rate_is_named(toy_profile):
    with pytest.raises(ValueError, match=r"rate=0\.3 was not profiled"):
        toy_profile.latency_ms(0.3, 1)


@pytest.mark.parametrize(
    "table", [{}, {1.0: {}}, {1.5: {1: 1.0}}, {1.0: {0: 1.0}}, {1.0: {1: -1.0}}]
)
def test_malformed_table_is_rejected(table):
    with pytest.raises(ValueError, match="LatencyProfile"):
        LatencyProfile(table)


def test_profile_measures_every_rate_and_batch_size(bundle_dir):
    profile = load_bundle(bundle_dir).profile(batch_sizes=(1, 4), repeats=2, cache=False)
    assert profile.rates == RATES
    assert all(profile.batch_sizes(rate) == (1, 4) for rate in RATES)


def test_profile_is_cached_beside_the_bundle(bundle_dir, tmp_path):
    import shutil

    path = tmp_path / "bundle"
    shutil.copytree(bundle_dir, path)
    load_bundle(path).profile(batch_sizes=(1,), repeats=2)
    cached = json.loads((tmp_path / "bundle.latency.json").read_text())
    assert {row["rate"] for row in cached["latencies_ms"]} == set(RATES)


def test_matching_cache_is_reused_without_measuring(bundle_dir, tmp_path, monkeypatch):
    cache = tmp_path / "profile.json"
    first = load_bundle(bundle_dir).profile(batch_sizes=(1,), repeats=2, cache=cache)

    def refuse(*args, **kwargs):
        raise AssertionError("measured although a matching cache exists")

    monkeypatch.setattr(profiling, "_measure", refuse)
    again = load_bundle(bundle_dir).profile(batch_sizes=(1,), repeats=2, cache=cache)
    assert again.to_dict() == first.to_dict()


def test_cache_of_other_batch_sizes_is_measured_again(bundle_dir, tmp_path):
    cache = tmp_path / "profile.json"
    bundle = load_bundle(bundle_dir)
    bundle.profile(batch_sizes=(1,), repeats=2, cache=cache)
    profile = bundle.profile(batch_sizes=(1, 2), repeats=2, cache=cache)
    assert profile.batch_sizes(1.0) == (1, 2)
    assert LatencyProfile.load(cache).batch_sizes(1.0) == (1, 2)


def test_cache_of_other_thread_count_is_measured_again(bundle_dir, tmp_path):
    cache = tmp_path / "profile.json"
    load_bundle(bundle_dir, num_threads=1).profile(batch_sizes=(1,), repeats=2, cache=cache)
    profile = load_bundle(bundle_dir, num_threads=2).profile(
        batch_sizes=(1,), repeats=2, cache=cache
    )
    assert profile.key["num_threads"] == 2


def test_unreadable_cache_warns_and_is_replaced(bundle_dir, tmp_path):
    cache = tmp_path / "profile.json"
    cache.write_text('{"format": "keras-slicing-latency-prof')
    with pytest.warns(UserWarning, match="unreadable latency cache"):
        load_bundle(bundle_dir).profile(batch_sizes=(1,), repeats=2, cache=cache)
    assert LatencyProfile.load(cache).rates == RATES


def test_failed_write_keeps_the_previous_cache_intact(toy_profile, tmp_path, monkeypatch):
    cache = tmp_path / "profile.json"
    toy_profile.save(cache)
    before = cache.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(latency_profile_lib.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        LatencyProfile({1.0: {1: 9.0}}).save(cache)
    assert cache.read_bytes() == before
    assert os.listdir(tmp_path) == ["profile.json"]


def test_unwritable_cache_only_warns(bundle_dir, tmp_path):
    cache = tmp_path / "missing_dir" / "profile.json"
    with pytest.warns(UserWarning, match="could not write the latency cache"):
        profile = load_bundle(bundle_dir).profile(batch_sizes=(1,), repeats=2, cache=cache)
    assert profile.rates == RATES


@pytest.mark.parametrize(
    "kwargs",
    [{"batch_sizes": ()}, {"batch_sizes": (0,)}, {"repeats": 0}, {"cache": 3}],
)
def test_bad_profile_arguments_are_rejected(bundle_dir, kwargs):
    with pytest.raises(ValueError, match="profile:"):
        load_bundle(bundle_dir).profile(**{"cache": False, **kwargs})
