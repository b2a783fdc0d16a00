"""What the HTTP front end adds to a request reaches the width planner.

Planning checks use the hand-made `toy_profile` ((1 + batch) * rate ms) on
the simulated clock, so every decision is exact; the HTTP checks bind
127.0.0.1 on a free port.
"""

import http.client
import io
import json
import time

import numpy as np
import pytest

from keras_slicing_lite import ElasticServer
from keras_slicing_lite import HTTPFrontEnd
from keras_slicing_lite import load_bundle
from keras_slicing_lite.http_server import RunningEstimate
from tests.lite.conftest import RATES
from tests.lite.conftest import toy_latency_ms

MS = 1e-3


@pytest.fixture
def server(bundle_dir, toy_profile):
    return ElasticServer(load_bundle(bundle_dir), toy_profile, plan_statistic="p50")


def _widest(fits):
    """The widest rate for which `fits(rate)` holds, else the narrowest."""
    return next((r for r in sorted(RATES, reverse=True) if fits(r)), min(RATES))


def test_front_end_cost_counts_against_each_width_throughput(server):
    arrivals, cost_ms = 700.0, 0.5

    def keeps_up(extra_ms):
        # Utilization at most 0.8 in full batches of 8.
        return lambda r: arrivals * (toy_latency_ms(r, 8) / 8 + extra_ms) * MS <= 0.8

    alone, shared = _widest(keeps_up(0.0)), _widest(keeps_up(cost_ms))
    assert (alone, shared) == (1.0, 0.5)  # the case is one where it matters
    assert server.plan([50 * MS], arrival_rate=arrivals) == (alone, 1)
    server.front_end(cost_ms=cost_ms)
    assert server.front_end_cost_ms == pytest.approx(cost_ms)
    assert server.plan([50 * MS], arrival_rate=arrivals) == (shared, 1)


def test_delivery_is_planned_before_each_deadline(server):
    due_ms, delivery_ms = 4.0, 2.6
    alone = _widest(lambda r: toy_latency_ms(r, 1) <= due_ms)
    reserved = _widest(lambda r: toy_latency_ms(r, 1) <= due_ms - delivery_ms)
    assert (alone, reserved) == (1.0, 0.5)
    assert server.plan([due_ms * MS], arrival_rate=0.0) == (alone, 1)
    server.front_end(delivery_ms=delivery_ms)
    assert server.delivery_ms == pytest.approx(delivery_ms)
    assert server.plan([due_ms * MS], arrival_rate=0.0) == (reserved, 1)
    server.front_end()  # back to nothing reserved
    assert server.plan([due_ms * MS], arrival_rate=0.0) == (alone, 1)


@pytest.mark.parametrize("kwargs, name", [
    ({"delivery_ms": -1.0}, "delivery_ms"),
    ({"cost_ms": float("nan")}, "cost_ms"),
    ({"delivery_ms": True}, "delivery_ms"),
    ({"cost_ms": "1"}, "cost_ms"),
])
def test_front_end_rejects_bad_values(server, kwargs, name):
    with pytest.raises(ValueError, match=f"{name} must be a number >= 0"):
        server.front_end(**kwargs)


def test_delivery_estimate_is_a_weighted_mean_plus_spread():
    times = np.array([0.002, 0.004, 0.003, 0.020, 0.002, 0.010, 0.001])
    a, spread = 0.2, 3.0
    estimate = RunningEstimate(smoothing=a, spread=spread)
    # Reference: the mean after n updates weighs sample k by a(1-a)^(n-k),
    # the first sample by (1-a)^n; the deviation the same way over
    # |sample - mean before it|, starting from 0.
    means = [times[0]]
    for n in range(1, len(times)):
        w = a * (1 - a) ** np.arange(n - 1, -1, -1)
        means.append((1 - a) ** n * times[0] + np.sum(w * times[1:n + 1]))
    gaps = np.abs(times[1:] - np.array(means[:-1]))
    w = a * (1 - a) ** np.arange(len(gaps) - 1, -1, -1)
    deviation = np.sum(w * gaps)
    for t in times:
        estimate.add(t)
    assert estimate.estimate_s == pytest.approx(means[-1] + spread * deviation)
    assert RunningEstimate().estimate_s == 0.0  # nothing measured, nothing reserved


def _post_npy(front, x, deadline_ms=1000):
    buffer = io.BytesIO()
    np.save(buffer, x.astype("float32"))
    connection = http.client.HTTPConnection(*front.address, timeout=30)
    try:
        connection.request("POST", f"/predict?deadline_ms={deadline_ms}", buffer.getvalue(),
                           {"Content-Type": "application/x-npy"})
        response = connection.getresponse()
        assert response.status == 200
        return json.loads(response.read())
    finally:
        connection.close()


@pytest.mark.parametrize("measure", [True, False])
def test_front_end_reserves_its_measured_reply_time(bundle_dir, toy_profile, reference, measure):
    slow_s = 0.03
    server = ElasticServer(load_bundle(bundle_dir), toy_profile, clock="real").start()
    front = HTTPFrontEnd(server, port=0, measure_front_end=measure).start()
    answer = front.api._answer

    def slow_answer(*args):
        # Every reply leaves at least `slow_s` after its output was ready.
        time.sleep(slow_s)
        return answer(*args)

    front.api._answer = slow_answer
    try:
        x = reference[0]
        for k in range(3):
            _post_npy(front, x[k:k + 2])
        # The handler measures after writing; give it a moment to finish.
        deadline = time.time() + 10
        while front.stats()["http"]["delivery_ms"] == 0 and time.time() < deadline:
            time.sleep(0.01)
        stats = front.stats()["http"]
    finally:
        front.shutdown()
        server.stop(timeout=10)
    # Each reply took at least slow_s: a mean plus deviations is no less.
    assert stats["delivery_ms"] >= slow_s * 1e3
    # Processor time only: the sleep is not the front end's work.
    assert 0 < stats["cost_ms"] < slow_s * 1e3
    if measure:
        assert server.delivery_ms >= slow_s * 1e3
        assert server.front_end_cost_ms > 0
    else:
        assert server.delivery_ms == 0 and server.front_end_cost_ms == 0
