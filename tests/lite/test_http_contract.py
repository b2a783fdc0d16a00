"""The HTTP contract of docs/http-api.md under hostile clients, on both transports.

Every case runs on the uvicorn front end and on the standard-library one:
malformed requests get a 4xx with a JSON error naming the field, a batch
that can never be queued gets 413 without taking places in the queue,
stalled clients get 408 and are disconnected, connections beyond the cap
are refused with 503, pinned-rate requests go through the server (their
deadline kept, counted), and shutdown never blocks. Servers bind to
127.0.0.1 on a free port.
"""

import collections
import io
import json
import logging
import socket
import threading
import time

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from keras_slicing_lite import ElasticServer
from keras_slicing_lite import HTTPFrontEnd
from keras_slicing_lite import load_bundle
from keras_slicing_lite.asgi_server import ASGIFrontEnd
from tests.lite.conftest import call


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    # Overrides the suite's reset of Keras state: nothing here uses Keras
    # outside the session fixtures, and the reset costs about a second.
    yield


FRONTS = {"asgi": ASGIFrontEnd, "stdlib": HTTPFrontEnd}
READ_TIMEOUT_S = 0.5
MAX_QUEUE = 8


def _serve(kind, bundle_dir, toy_profile, **kwargs):
    server = ElasticServer(
        load_bundle(bundle_dir), toy_profile, clock="real", max_queue=MAX_QUEUE
    ).start()
    options = {"read_timeout_s": READ_TIMEOUT_S, "max_body_bytes": 200_000, **kwargs}
    return FRONTS[kind](server, port=0, **options).start()


def _profile():
    from keras_slicing_lite import LatencyProfile
    from tests.lite.conftest import RATES
    from tests.lite.conftest import toy_latency_ms

    return LatencyProfile({r: {b: toy_latency_ms(r, b) for b in (1, 2, 4, 8)} for r in RATES})


@pytest.fixture(scope="module", params=sorted(FRONTS))
def front(request, bundle_dir):
    # One server per transport for the module: the tests that break or
    # reconfigure a server start their own.
    front = _serve(request.param, bundle_dir, _profile())
    yield front
    front.shutdown()
    front.server.stop(timeout=10)


def _by_rate(front):
    return front.stats()["server"]["by_rate"]




def _raw(front, data, wait_s=10):
    """Sends `data` on a fresh socket; returns everything until the server
    closes, or raises when it keeps the connection open past `wait_s`."""
    with socket.create_connection(front.address, timeout=wait_s) as sock:
        sock.sendall(data)
        received = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return received
            received += chunk


EXAMPLE = np.zeros((8, 8, 1)).tolist()


@pytest.mark.parametrize(
    "body, field",
    [
        (b"[" * 200_000, "body"),  # RecursionError on main
        (b'{"inputs": [' + b"1" * 5000 + b"]}", "body"),  # too many digits for int()
        (b'{"input": [' + b"9" * 400 + b"]}", "input"),  # OverflowError as a float
        (b'{"input": %s, "deadline_ms": %s}' % (json.dumps(EXAMPLE).encode(), b"9" * 400),
         "deadline_ms"),
        (b'{"input": %s, "rate": %s}' % (json.dumps(EXAMPLE).encode(), b"9" * 400), "rate"),
        ({"input": [[[True] * 1] * 8] * 8}, "input"),  # true is not a number
        ({"input": [[["0.5"]] * 8] * 8}, "input"),  # nor is a string
        ({"input": EXAMPLE, "rate": "0.5"}, "rate"),
        ({"input": EXAMPLE, "rate": True}, "rate"),
        ({"input": EXAMPLE, "deadline_ms": True}, "deadline_ms"),
        ({"input": EXAMPLE, "deadline_ms": "50"}, "deadline_ms"),
    ],
)
def test_malformed_json_gets_400_naming_the_field(front, body, field):
    status, answer = call(front, "POST", "/predict", body)
    assert status == 400, answer
    assert answer["field"] == field and answer["error"]


def test_bool_npy_body_is_refused_like_json_true(front):
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((1, 8, 8, 1), bool))
    status, answer = call(front, "POST", "/predict", buffer.getvalue(),
                           {"Content-Type": "application/x-npy"})
    assert status == 400 and answer["field"] == "inputs"


def test_query_rate_of_400_digits_is_400(front):
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((1, 8, 8, 1), "float32"))
    status, answer = call(front, "POST", "/predict?rate=" + "9" * 400, buffer.getvalue(),
                           {"Content-Type": "application/x-npy"})
    assert status == 400 and answer["field"] == "rate"


def test_batch_that_can_never_be_queued_is_413_and_holds_no_place(front, reference):
    x = reference[0]
    status, answer = call(front, "POST", "/predict", {"inputs": x[:MAX_QUEUE + 1].tolist()})
    assert status == 413 and answer["field"] == "inputs"
    assert f"max_queue={MAX_QUEUE}" in answer["error"]
    assert front.server.stats["queued"] == 0
    status, answer = call(front, "POST", "/predict", {"inputs": x[:MAX_QUEUE].tolist()})
    assert status == 200 and len(answer["outputs"]) == MAX_QUEUE


def test_stalled_request_head_gets_408_and_the_socket_closed(front):
    received = _raw(front, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-")
    assert received.startswith(b"HTTP/1.1 408")
    assert json.loads(received.split(b"\r\n\r\n", 1)[1])["field"] == "headers"


def test_stalled_body_gets_408_and_the_socket_closed(front):
    received = _raw(front, b"POST /predict HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Length: 100000\r\n\r\n" + b"[" * 20)
    assert received.startswith(b"HTTP/1.1 408")
    assert json.loads(received.split(b"\r\n\r\n", 1)[1])["field"] == "body"


def test_malformed_http_gets_a_json_400(front):
    received = _raw(front, b"GARBAGE\r\n\r\n")
    assert received.startswith(b"HTTP/1.1 400")
    assert "error" in json.loads(received.split(b"\r\n\r\n", 1)[1])


@pytest.mark.parametrize("kind", sorted(FRONTS))
def test_connections_beyond_the_cap_are_refused_then_served_again(kind, bundle_dir, toy_profile):
    front = _serve(kind, bundle_dir, toy_profile, max_connections=3, read_timeout_s=30)
    held = [socket.create_connection(front.address, timeout=10) for _ in range(3)]
    try:
        # A request on a held connection shows the server has taken them all.
        for sock in held:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        received = _raw(front, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert received.startswith(b"HTTP/1.1 503")
        assert "max_connections=3" in json.loads(received.split(b"\r\n\r\n", 1)[1])["error"]
    finally:
        for sock in held:
            sock.close()
    try:
        deadline = time.monotonic() + 10
        while call(front, "GET", "/health")[0] != 200:
            assert time.monotonic() < deadline, "closed connections were never released"
            time.sleep(0.05)
        assert front.stats()["http"]["refused_connections"] >= 1
    finally:
        front.shutdown()
        front.server.stop(timeout=10)


def test_pinned_rate_goes_through_the_server_with_its_deadline(front, reference):
    x = reference[0]
    before = front.stats()["server"]
    status, answer = call(front, "POST", "/predict",
                           {"input": x[0].tolist(), "rate": 0.5, "deadline_ms": 0})
    assert status == 200 and answer["rate"] == 0.5 and answer["late"] is True
    buffer = io.BytesIO()
    np.save(buffer, x[:2].astype("float32"))
    status, answer = call(front, "POST", "/predict?rate=0.25&deadline_ms=0", buffer.getvalue(),
                           {"Content-Type": "application/x-npy"})
    assert status == 200 and answer["rates"] == [0.25, 0.25] and answer["late"] == [True, True]
    after = front.stats()["server"]
    assert {r: n - before["by_rate"].get(r, 0) for r, n in after["by_rate"].items()
            if n != before["by_rate"].get(r, 0)} == {"0.5": 1, "0.25": 2}
    assert after["served"] - before["served"] == 3 and after["late"] - before["late"] == 3


def _metrics(front):
    status, text = call(front, "GET", "/metrics")
    assert status == 200
    return collections.Counter({
        (s.name, s.labels.get("rate")): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    })


def test_metrics_count_answers_and_latency_per_width(front, reference):
    x = reference[0]
    before = _metrics(front)
    for rate, count in ((0.5, 3), (1.0, 2)):
        status, _ = call(front, "POST", "/predict", {"inputs": x[:count].tolist(), "rate": rate})
        assert status == 200
    after = _metrics(front)
    added = {key: after[key] - before[key] for key in after}
    assert added[("keras_slicing_answers_total", "0.5")] == 3
    assert added[("keras_slicing_answers_total", "1")] == 2
    assert added[("keras_slicing_latency_seconds_count", "0.5")] == 3


@pytest.mark.parametrize("kind", sorted(FRONTS))
def test_shutdown_of_a_front_end_never_started_returns(kind, bundle_dir, toy_profile):
    server = ElasticServer(load_bundle(bundle_dir), toy_profile, clock="real").start()
    front = FRONTS[kind](server, port=0)
    stopper = threading.Thread(target=front.shutdown, daemon=True)
    stopper.start()
    stopper.join(10)
    server.stop(timeout=10)
    assert not stopper.is_alive()


@pytest.mark.parametrize("kind", sorted(FRONTS))
def test_a_fault_is_a_logged_500(kind, bundle_dir, toy_profile, reference, caplog):
    front = _serve(kind, bundle_dir, toy_profile)
    front.server.bundle.predict = lambda batch, rate: 1 / 0
    try:
        with caplog.at_level(logging.ERROR, logger="keras_slicing_lite.http"):
            status, answer = call(front, "POST", "/predict", {"input": reference[0][0].tolist()})
    finally:
        front.shutdown()
        front.server.stop(timeout=10)
    assert status == 500 and "ZeroDivisionError" in answer["error"]
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)


@pytest.mark.parametrize("kind", sorted(FRONTS))
@pytest.mark.parametrize(
    "limits, message",
    [
        ({"read_timeout_s": 0}, r"read_timeout_s must be a positive number\. Received: read_timeout_s=0"),
        ({"max_connections": 0.5}, r"max_connections must be a positive integer\. Received: max_connections=0\.5"),
        ({"max_connections": True}, r"max_connections must be a positive integer"),
    ],
    ids=["zero timeout", "fractional connections", "boolean connections"],
)
def test_both_front_ends_refuse_the_same_bad_limits(kind, limits, message, bundle_dir, toy_profile):
    server = ElasticServer(load_bundle(bundle_dir), toy_profile, clock="real")
    with pytest.raises(ValueError, match=f"^{FRONTS[kind].__name__}: {message}"):
        FRONTS[kind](server, port=0, **limits)
