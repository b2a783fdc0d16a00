"""The width choice under a queue that grows faster than full width drains.

Costs come from the hand-made `toy_profile` ((1 + batch) * rate ms, batches
up to 8) and time from the simulated clock, so every decision is exact.
Throughput in full batches of 8: 1.0 -> 889/s, 0.75 -> 1185/s,
0.5 -> 1778/s, 0.25 -> 3556/s.
"""

import math

import numpy as np
import pytest

from keras_slicing_lite import ElasticServer
from keras_slicing_lite import LatencyProfile
from keras_slicing_lite import Request
from keras_slicing_lite import load_bundle
from keras_slicing_lite.planner import ArrivalRate
from keras_slicing_lite.planner import CostFit
from tests.lite.conftest import RATES
from tests.lite.conftest import toy_latency_ms

MS = 1e-3


@pytest.fixture
def server(bundle_dir, toy_profile):
    return ElasticServer(load_bundle(bundle_dir), toy_profile, plan_statistic="p50")


def test_arrival_rate_beyond_full_width_throughput_narrows_a_lone_request(server):
    # One request with plenty of slack: only the arrival rate decides.
    assert server.plan([50 * MS], arrival_rate=0.0) == (1.0, 1)
    # 800/s: 1.0 would run at 0.9 utilization, 0.75 at 0.68.
    assert server.plan([50 * MS], arrival_rate=800.0) == (0.75, 1)
    assert server.plan([50 * MS], arrival_rate=1200.0) == (0.5, 1)
    assert server.plan([50 * MS], arrival_rate=2000.0) == (0.25, 1)
    # Beyond every width: overloaded, the narrowest drains fastest.
    assert server.plan([50 * MS], arrival_rate=5000.0) == (0.25, 1)


def test_width_must_serve_the_whole_queue_in_time(server):
    # 24 requests due at 21 ms. Full width for the first batch (9 ms) and
    # 0.25 for the other two (4.5 ms) would fit, but staying at 1.0 takes
    # 27 ms: a width the server could not keep is not chosen. 0.75 takes
    # 20.25 ms.
    assert server.plan([21 * MS] * 24, arrival_rate=0.0) == (0.75, 8)
    assert server.plan([28 * MS] * 24, arrival_rate=0.0) == (1.0, 8)


def test_later_deadlines_only_bind_their_own_batch(server):
    # The first batch is due at 10 ms, the second at 100 ms: 1.0 fits both.
    deadlines = [10 * MS] * 8 + [100 * MS] * 8
    assert server.plan(deadlines, arrival_rate=0.0) == (1.0, 8)


def test_plan_uses_the_server_estimate_of_the_arrival_rate(bundle_dir, toy_profile, reference):
    server = ElasticServer(load_bundle(bundle_dir), toy_profile, plan_statistic="p50")
    assert server.plan([50 * MS], now_s=0.0) == (1.0, 1)
    # A replay at 2,000 requests per second leaves the estimate there.
    x, _ = reference
    requests = [Request(x[i % len(x)], i / 2000, i / 2000 + 1.0) for i in range(200)]
    server.replay(requests)
    last = requests[-1].arrival_s
    assert server.plan([last + 50 * MS], now_s=last) == (0.25, 1)
    # A quiet second later the burst is forgotten.
    assert server.plan([last + 1.05], now_s=last + 1.0) == (1.0, 1)


def _tailed_profile():
    """The toy costs, but one call in ten takes 1.5x and one 2x: a real tail."""
    cells = {}
    for rate in RATES:
        cells[rate] = {}
        for batch in (1, 2, 4, 8):
            cost = toy_latency_ms(rate, batch)
            samples = [cost] * 8 + [1.5 * cost, 2 * cost]
            cells[rate][batch] = {
                "p50": cost, "p90": 1.5 * cost, "mean": float(np.mean(samples)),
                "samples": samples,
            }
    return LatencyProfile(cells)


def test_sustained_overload_of_full_width_is_served_on_time(bundle_dir, reference):
    # 2,000 requests/s for 0.3 s, each due 15 ms after arrival: 2.25x what
    # full width drains; the narrowest drains 3,556/s. Each call's cost is
    # drawn from the tailed samples (seeded), so a queue kept at the edge
    # of its deadlines would overrun them (a planner that assumed the rest
    # of the queue would go narrow answered 11 of these late).
    x, _ = reference
    rng = np.random.default_rng(0)
    arrivals = np.sort(rng.uniform(0.0, 0.3, 600))
    requests = [
        Request(x[i % len(x)], t, t + 15 * MS, id=i) for i, t in enumerate(arrivals)
    ]
    bundle, profile = load_bundle(bundle_dir), _tailed_profile()
    full = ElasticServer(bundle, profile, rates=[1.0], simulated_latency="sampled")
    elastic = ElasticServer(bundle, profile, simulated_latency="sampled")
    full_late = np.mean([r.late for r in full.replay(requests)])
    responses = elastic.replay(requests)
    assert full_late > 0.5
    assert sum(r.late for r in responses) == 0
    assert elastic.stats["served"] == 600
    # Once the estimate has seen the stream, full width is never chosen.
    assert all(r.rate < 1.0 for r in responses if r.arrival_s > 0.05)


def test_steady_stream_reads_its_rate_and_decays_after():
    rate = ArrivalRate(window_s=0.02)
    assert rate.at(0.0) == 0.0
    for i in range(1000):
        rate.add(i / 500)  # 500 per second for 2 s
    # Halfway between two arrivals the estimate is the rate itself.
    between = 999 / 500 + 0.001
    assert rate.at(between) == pytest.approx(500, rel=0.01)
    quiet = between + 0.1
    assert rate.at(quiet) == pytest.approx(rate.at(between) * math.exp(-5))


def test_negative_arrival_rate_is_refused(server):
    with pytest.raises(ValueError, match="arrival_rate must be a number >= 0"):
        server.plan([50 * MS], arrival_rate=-1.0)


def test_cost_fit_separates_fixed_overhead_from_slowdown():
    fit = CostFit(smoothing=0.1)
    rng = np.random.default_rng(0)
    for profiled in rng.uniform(0.5 * MS, 20 * MS, 200):
        fit.add(profiled, 2 * MS + 3.0 * profiled)
    assert fit.slowdown == pytest.approx(3.0)
    assert fit.fixed_s == pytest.approx(2 * MS)
    assert fit.cost_s(10 * MS) == pytest.approx(32 * MS)


def test_cost_fit_keeps_its_slowdown_while_batches_cost_alike():
    fit = CostFit(smoothing=0.1)
    for profiled in (1 * MS, 10 * MS) * 50:
        fit.add(profiled, 3.0 * profiled)
    for _ in range(100):  # all at one cost: no slope to fit
        fit.add(8 * MS, 25 * MS)
    # The slope moves only while old and new batches are both in the fit.
    assert fit.slowdown == pytest.approx(3.0, rel=0.05)
    assert fit.fixed_s == pytest.approx(25 * MS - fit.slowdown * 8 * MS, abs=1e-6)
    assert fit.cost_s(8 * MS) == pytest.approx(25 * MS, abs=1e-6)


def test_a_slowed_machine_narrows_the_width_it_can_keep(server):
    # Full width keeps up with 600/s at 0.76 utilization on the profile;
    # once batches are seen to take twice their profiled cost it would not.
    assert server.plan([50 * MS], arrival_rate=600.0) == (1.0, 1)
    planner = server._planner
    for rate, bucket in [(r, b) for r in RATES for b in (1, 2, 4, 8)] * 5:
        planner.observe(rate, bucket, 2 * toy_latency_ms(rate, bucket) * MS)
    assert planner.costs.slowdown == pytest.approx(2.0)
    assert server.plan([50 * MS], arrival_rate=600.0) == (0.5, 1)
