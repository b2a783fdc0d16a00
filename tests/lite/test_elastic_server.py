import math

import numpy as np
import pytest

from keras_slicing_lite import ElasticServer
from keras_slicing_lite import Request
from keras_slicing_lite import load_bundle
from tests.lite.conftest import toy_latency_ms

MS = 1e-3


@pytest.fixture
def server(bundle_dir, toy_profile):
    return ElasticServer(load_bundle(bundle_dir), toy_profile, plan_statistic="p50")


def test_lone_request_with_slack_gets_full_width(server):
    assert server.plan([10 * MS]) == (1.0, 1)


def test_tight_deadline_narrows_the_width(server):
    # 1.0 costs 2 ms for one example, 0.75 costs 1.5 ms.
    assert server.plan([1.6 * MS]) == (0.75, 1)


def test_backlog_behind_the_batch_narrows_it(server):
    # Nine requests: a batch of 8 then one, both at the same rate, must end
    # by the deadline: 9 + 2 = 11 ms at 1.0, 6.75 + 1.5 = 8.25 ms at 0.75,
    # 4.5 + 1 = 5.5 ms at 0.5.
    assert server.plan([8 * MS] * 9) == (0.5, 8)
    assert server.plan([10 * MS] * 9) == (0.75, 8)
    assert server.plan([11 * MS] * 9) == (1.0, 8)


def test_reserve_keeps_slack_before_the_deadline(bundle_dir, toy_profile):
    reserved = ElasticServer(
        load_bundle(bundle_dir), toy_profile, plan_statistic="p50", reserve_ms=1.0
    )
    assert reserved.plan([3.0 * MS]) == (1.0, 1)
    assert reserved.plan([2.5 * MS]) == (0.75, 1)


def test_overload_falls_back_to_narrowest(server):
    assert server.plan([1 * MS] * 8) == (0.25, 8)


def test_light_load_is_served_at_full_width_on_time(server, reference):
    x, _ = reference
    requests = [
        Request(x[i], arrival_s=i * 20 * MS, deadline_s=i * 20 * MS + 10 * MS)
        for i in range(10)
    ]
    responses = server.replay(requests)
    assert [r.rate for r in responses] == [1.0] * 10
    assert not any(r.late for r in responses)
    expected = [t.arrival_s + toy_latency_ms(1.0, 1) * MS for t in requests]
    np.testing.assert_allclose([r.finish_s for r in responses], expected)


def test_burst_uses_narrowest_and_counts_late_answers(server, reference):
    x, _ = reference
    requests = [Request(x[i], arrival_s=0.0, deadline_s=5 * MS) for i in range(40)]
    responses = server.replay(requests)
    # Five batches of 8 at 0.25, 2.25 ms each: the first two are on time.
    assert {r.rate for r in responses} == {0.25}
    finishes = [r.finish_s for r in responses]
    expected = [(i // 8 + 1) * toy_latency_ms(0.25, 8) * MS for i in range(40)]
    np.testing.assert_allclose(finishes, expected)
    assert sum(r.late for r in responses) == 24
    assert server.stats["late"] == 24


def test_no_request_is_dropped(server, reference):
    x, _ = reference
    rng = np.random.default_rng(0)
    arrivals = np.sort(rng.uniform(0, 0.05, 200))
    requests = [
        Request(x[i % len(x)], arrival_s=t, deadline_s=t + 3 * MS, id=f"r{i}")
        for i, t in enumerate(arrivals)
    ]
    responses = server.replay(requests)
    assert [r.id for r in responses] == [f"r{i}" for i in range(200)]
    assert server.stats["served"] == 200
    assert sum(server.stats["by_rate"].values()) == 200


def test_width_returns_to_full_after_a_burst(server, reference):
    x, _ = reference
    burst = [Request(x[i], 0.0, 5 * MS) for i in range(40)]
    later = [Request(x[i], 0.1 + i * 0.02, 0.11 + i * 0.02) for i in range(3)]
    responses = server.replay(burst + later)
    assert [r.rate for r in responses[40:]] == [1.0] * 3


def test_partial_batch_costs_its_padded_batch_size(server, reference):
    x, _ = reference
    responses = server.replay([Request(x[i], 0.0, 1.0) for i in range(3)])
    assert responses[0].batch_size == 3
    assert responses[0].finish_s == pytest.approx(toy_latency_ms(1.0, 4) * MS)


def test_outputs_match_keras_at_the_chosen_rate(server, reference):
    x, expected = reference
    requests = [Request(x[i], arrival_s=0.0, deadline_s=(2 + i) * MS) for i in range(30)]
    responses = server.replay(requests)
    assert len({r.rate for r in responses}) > 1
    for i, response in enumerate(responses):
        np.testing.assert_allclose(response.output, expected[response.rate][i], atol=1e-5)


def test_simulated_replay_is_reproducible(bundle_dir, toy_profile, reference):
    x, _ = reference
    rng = np.random.default_rng(1)
    arrivals = np.sort(rng.uniform(0, 0.02, 100))
    requests = [Request(x[i % 64], t, t + 2 * MS) for i, t in enumerate(arrivals)]
    runs = [
        [(r.rate, r.start_s, r.finish_s) for r in ElasticServer(
            load_bundle(bundle_dir), toy_profile).replay(requests)]
        for _ in range(2)
    ]
    assert runs[0] == runs[1]


def test_fixed_width_server_uses_only_its_rate(bundle_dir, toy_profile, reference):
    x, _ = reference
    fixed = ElasticServer(load_bundle(bundle_dir), toy_profile, rates=[1.0])
    responses = fixed.replay([Request(x[i], 0.0, 1 * MS) for i in range(20)])
    assert {r.rate for r in responses} == {1.0}


def test_max_batch_size_caps_batches(bundle_dir, toy_profile, reference):
    x, _ = reference
    capped = ElasticServer(load_bundle(bundle_dir), toy_profile, max_batch_size=2)
    responses = capped.replay([Request(x[i], 0.0, 1.0) for i in range(5)])
    assert [r.batch_size for r in responses] == [2, 2, 2, 2, 1]


def test_real_clock_replay_answers_every_request(bundle_dir, toy_profile, reference):
    x, expected = reference
    server = ElasticServer(load_bundle(bundle_dir), toy_profile, clock="real")
    requests = [Request(x[i], arrival_s=i * 0.5 * MS) for i in range(20)]
    responses = server.replay(requests)
    for i, response in enumerate(responses):
        assert response.finish_s >= response.arrival_s
        assert not response.late
        np.testing.assert_allclose(response.output, expected[response.rate][i], atol=1e-5)


def test_live_submissions_are_all_answered(bundle_dir, toy_profile, reference):
    x, expected = reference
    with ElasticServer(load_bundle(bundle_dir), toy_profile, clock="real") as server:
        futures = [server.submit(x[i], deadline_ms=1e4) for i in range(32)]
    assert all(f.done() for f in futures)
    for i, future in enumerate(futures):
        response = future.result()
        np.testing.assert_allclose(response.output, expected[response.rate][i], atol=1e-5)
    assert server.stats["served"] == 32


def test_live_request_without_deadline_is_never_late(bundle_dir, toy_profile, reference):
    x, _ = reference
    with ElasticServer(load_bundle(bundle_dir), toy_profile, clock="real") as server:
        response = server.submit(x[0]).result(timeout=60)
    assert response.deadline_s == math.inf
    assert not response.late


def test_simulated_server_refuses_live_requests(server):
    with pytest.raises(ValueError, match="clock='real'"):
        server.start()


def test_submit_before_start_is_refused(bundle_dir, toy_profile, reference):
    server = ElasticServer(load_bundle(bundle_dir), toy_profile, clock="real")
    with pytest.raises(RuntimeError, match="call start"):
        server.submit(reference[0][0])


def test_malformed_request_is_named_before_serving(server):
    requests = [Request(np.zeros((8, 8, 1), "float32")), Request(np.zeros((8, 8)))]
    with pytest.raises(ValueError, match=r"request 1.*x\.shape=\(1, 8, 8\)"):
        server.replay(requests)
    assert server.stats["served"] == 0


def test_deadline_before_arrival_is_rejected(server, reference):
    with pytest.raises(ValueError, match="due before it arrives"):
        server.replay([Request(reference[0][0], arrival_s=1.0, deadline_s=0.5)])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"clock": "wall"}, "clock must be one of"),
        ({"rates": [0.3]}, r"rate=0\.3 is not in this bundle"),
        ({"max_batch_size": 0}, "max_batch_size must be a positive integer"),
        ({"headroom": 0}, "headroom must be a positive number"),
        ({"plan_statistic": "p99"}, "plan_statistic must be one of"),
        ({"reserve_ms": -1}, "reserve_ms must be a number >= 0"),
    ],
)
def test_bad_server_arguments_are_rejected(bundle_dir, toy_profile, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ElasticServer(load_bundle(bundle_dir), toy_profile, **kwargs)
