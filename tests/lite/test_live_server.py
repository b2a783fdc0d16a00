"""The live ElasticServer under concurrency: nothing hangs, nothing is lost.

Many client threads submit with random cancels; a fault is injected in the
worker; the server is stopped during load. Every future that was not
cancelled must end answered or failed, within a timeout.
"""

import concurrent.futures
import itertools
import random
import threading
import time

import numpy as np
import pytest

from keras_slicing_lite import BatchTooLargeError
from keras_slicing_lite import ElasticServer
from keras_slicing_lite import LatencyProfile
from keras_slicing_lite import QueueFullError
from keras_slicing_lite import Request
from keras_slicing_lite import ServerFailedError
from keras_slicing_lite import ServerStoppedError
from keras_slicing_lite import load_bundle

WAIT_S = 20


def _clients(server, x, threads, per_thread, cancel_fraction, seed=0):
    """Submits from `threads` threads; returns [(future, cancelled)], errors.

    `per_thread=None` submits until the server refuses a request.
    """
    results, errors, lock = [], [], threading.Lock()

    def client(k):
        rng = random.Random(seed + k)
        count = itertools.count() if per_thread is None else range(per_thread)
        for i in count:
            try:
                future = server.submit(x[(k * 1000 + i) % len(x)], deadline_ms=50)
            except (ServerStoppedError, ServerFailedError, QueueFullError) as error:
                with lock:
                    errors.append(error)
                return
            cancelled = rng.random() < cancel_fraction and future.cancel()
            with lock:
                results.append((future, cancelled))

    workers = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(threads)]
    for worker in workers:
        worker.start()
    return workers, results, errors


def _settled(results):
    futures = [f for f, cancelled in results if not cancelled]
    done, not_done = concurrent.futures.wait(futures, timeout=WAIT_S)
    assert not not_done, f"{len(not_done)} requests never answered"
    return futures


@pytest.fixture
def live(bundle_dir, toy_profile):
    server = ElasticServer(load_bundle(bundle_dir), toy_profile, clock="real")
    yield server
    server.stop(timeout=WAIT_S)


def test_cancelled_futures_are_skipped_and_all_others_answered(live, reference):
    x, expected = reference
    live.start()
    workers, results, errors = _clients(live, x, threads=8, per_thread=150, cancel_fraction=0.2)
    for worker in workers:
        worker.join(WAIT_S)
    futures = _settled(results)
    assert live.stop(timeout=WAIT_S)
    assert not errors
    cancelled = sum(c for _, c in results)
    assert cancelled > 50
    assert all(f.result(timeout=0).output.shape == (10,) for f in futures)
    stats = live.stats
    assert stats["served"] == len(futures)
    assert stats["cancelled"] == cancelled
    assert stats["failed"] == 0


def test_answers_under_load_match_the_model_at_their_rate(live, reference):
    x, expected = reference
    with live:
        futures = [live.submit(x[i % len(x)], deadline_ms=i % 20) for i in range(200)]
        responses = [f.result(timeout=WAIT_S) for f in futures]
    for i, response in enumerate(responses):
        np.testing.assert_allclose(
            response.output, expected[response.rate][i % len(x)], atol=1e-5
        )


def test_worker_fault_fails_held_and_queued_requests_and_later_submits(live, reference):
    x, _ = reference
    real_predict = live.bundle.predict
    calls = []

    def faulty(batch, rate):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("injected interpreter fault")
        return real_predict(batch, rate)

    live.start()  # warms every width up first: the fault is for requests
    live.bundle.predict = faulty
    workers, results, _ = _clients(live, x, threads=6, per_thread=200, cancel_fraction=0.05)
    for worker in workers:
        worker.join(WAIT_S)
    futures = _settled(results)
    failed = [f for f in futures if f.exception(timeout=0) is not None]
    assert failed
    assert all("injected" in str(f.exception(timeout=0)) for f in failed)
    assert live.fault is not None and not live.running
    with pytest.raises(ServerFailedError, match="injected") as caught:
        live.submit(x[0])
    assert isinstance(caught.value.__cause__, RuntimeError)
    stats = live.stats
    assert stats["served"] + stats["failed"] == len(futures)
    assert not live.stop(timeout=1)


def test_stop_during_load_answers_or_fails_every_request(live, reference):
    x, _ = reference
    live.start()
    # The clients submit until refused, so they are still submitting when
    # stop() comes, however fast the machine (a fixed count could all be in
    # before it).
    workers, results, errors = _clients(live, x, threads=6, per_thread=None, cancel_fraction=0.1)
    deadline = time.perf_counter() + WAIT_S
    while len(results) < 500 and time.perf_counter() < deadline:
        time.sleep(0.01)
    # stop() must return while clients keep submitting; a hang is caught by
    # the join's timeout, not by timing the call (the machine may be busy).
    stopper = threading.Thread(target=live.stop, kwargs={"timeout": 0.05})
    stopper.start()
    stopper.join(WAIT_S)
    assert not stopper.is_alive()
    for worker in workers:
        worker.join(WAIT_S)
        assert not worker.is_alive()
    futures = _settled(results)
    assert len(errors) == 6 and all(isinstance(e, ServerStoppedError) for e in errors), errors
    for future in futures:
        error = future.exception(timeout=0)
        assert error is None or isinstance(error, ServerStoppedError)


def test_full_queue_rejects_at_once(bundle_dir, toy_profile, reference):
    x, _ = reference
    server = ElasticServer(
        load_bundle(bundle_dir), toy_profile, clock="real", max_queue=4, max_batch_size=1
    )
    gate = threading.Event()
    real_predict = server.bundle.predict
    with server:  # warms every width up first: the gate is for requests
        server.bundle.predict = lambda batch, rate: gate.wait(WAIT_S) and real_predict(batch, rate)
        first = server.submit(x[0])
        while server.stats["queued"]:  # the worker holds the first one
            time.sleep(0.001)
        queued = [server.submit(x[i]) for i in range(4)]
        with pytest.raises(QueueFullError, match="max_queue"):
            server.submit(x[5])
        # At once: refused while the worker still holds the first request,
        # not after waiting for room (none frees before the gate opens).
        assert not first.done()
        gate.set()
        for future in [first, *queued]:
            assert future.result(timeout=WAIT_S).output.shape == (10,)
    assert server.stats["rejected"] == 1


@pytest.mark.parametrize("deadline_ms", [0, -20])
def test_request_due_on_arrival_is_answered_and_counted_late(live, reference, deadline_ms):
    with live:
        response = live.submit(reference[0][0], deadline_ms=deadline_ms).result(timeout=WAIT_S)
    assert response.late
    assert live.stats["late"] == 1 and live.stats["served"] == 1


def test_submit_after_stop_is_refused(live, reference):
    live.start()
    live.stop()
    with pytest.raises(ServerStoppedError):
        live.submit(reference[0][0])


@pytest.mark.parametrize(
    "kwargs, match",
    [({"max_queue": 0}, "max_queue must be a positive integer"),
     ({"simulated_latency": "p99"}, "simulated_latency must be one of")],
)
def test_bad_live_arguments_are_rejected(bundle_dir, toy_profile, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ElasticServer(load_bundle(bundle_dir), toy_profile, **kwargs)


def test_stop_timeout_must_be_a_number(live):
    with pytest.raises(ValueError, match="timeout must be a number"):
        live.stop(timeout=-1)


def test_sampled_simulated_latency_draws_measured_calls(bundle_dir, reference):
    x, _ = reference
    samples = {1: [1.0, 1.0, 9.0], 2: [2.0, 2.0, 18.0]}
    profile = LatencyProfile(
        {r: {b: {"p50": s[0], "p90": s[-1], "mean": np.mean(s), "samples": s}
             for b, s in samples.items()} for r in (1.0, 0.75, 0.5, 0.25)}
    )
    requests = [Request(x[0], arrival_s=i * 0.05) for i in range(60)]

    def durations(mode, seed=0):
        server = ElasticServer(
            load_bundle(bundle_dir), profile, rates=[1.0],
            simulated_latency=mode, seed=seed,
        )
        return [round((r.finish_s - r.start_s) * 1e3, 6) for r in server.replay(requests)]

    assert set(durations("p50")) == {1.0}
    sampled = durations("sampled")
    assert set(sampled) == {1.0, 9.0}
    assert sampled == durations("sampled")


def test_start_calls_every_width_at_every_batch_size_before_requests(
    bundle_dir, toy_profile
):
    bundle = load_bundle(bundle_dir)
    real_predict, seen = bundle.predict, []

    def counting(batch, rate):
        seen.append((rate, len(batch)))
        return real_predict(batch, rate)

    bundle.predict = counting
    server = ElasticServer(bundle, toy_profile, rates=[1.0, 0.25], clock="real")
    server.start()
    assert server.stop(timeout=WAIT_S)
    assert sorted(seen) == sorted((r, b) for r in (1.0, 0.25) for b in (1, 2, 4, 8))


def test_pinned_rate_is_served_in_the_queue_with_its_deadline(live, reference):
    x, expected = reference
    with live:
        pinned = [live.submit(x[i], deadline_ms=0, rate=0.25) for i in range(4)]
        free = [live.submit(x[i], deadline_ms=1000) for i in range(4)]
        done, not_done = concurrent.futures.wait(pinned + free, timeout=WAIT_S)
    assert not not_done
    for i, future in enumerate(pinned):
        response = future.result()
        assert response.rate == 0.25 and response.late
        np.testing.assert_allclose(response.output, expected[0.25][i], atol=1e-5)
    stats = live.stats
    assert stats["served"] == 8 and stats["late"] >= 4
    assert stats["by_rate"][0.25] >= 4


def test_rate_the_server_does_not_serve_is_refused(bundle_dir, toy_profile, reference):
    server = ElasticServer(load_bundle(bundle_dir), toy_profile, rates=[1.0, 0.5], clock="real")
    with server:
        with pytest.raises(ValueError, match=r"rate=0\.25 is not served here"):
            server.submit(reference[0][0], rate=0.25)


def test_submit_batch_queues_all_or_nothing(bundle_dir, toy_profile, reference):
    x, _ = reference
    server = ElasticServer(load_bundle(bundle_dir), toy_profile, clock="real", max_queue=4)
    with server:
        with pytest.raises(BatchTooLargeError, match="max_queue=4 can ever hold"):
            server.submit_batch(x[:5])
        assert server.stats["queued"] == 0
        futures = server.submit_batch(x[:4], deadline_ms=100)
        assert len(futures) == 4
        done, not_done = concurrent.futures.wait(futures, timeout=WAIT_S)
    assert not not_done and server.stats["served"] == 4


def test_replay_serves_pinned_requests_at_their_rate_and_counts_them(bundle_dir, toy_profile, reference):
    x, expected = reference
    server = ElasticServer(load_bundle(bundle_dir), toy_profile)
    requests = [Request(x[i], arrival_s=0.001 * i, deadline_s=0.001 * i, rate=0.5 if i % 2 else None)
                for i in range(8)]
    responses = server.replay(requests)
    for i, response in enumerate(responses):
        if i % 2:
            assert response.rate == 0.5
        np.testing.assert_allclose(response.output, expected[response.rate][i], atol=1e-5)
    assert server.stats["served"] == 8
    assert server.stats["by_rate"][0.5] >= 4
