"""The HTTP/JSON front end: answers match the model, bad requests get 4xx.

Servers bind to 127.0.0.1 on a free port; nothing leaves this machine.
"""

import http.client
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

from keras_slicing_lite import ElasticServer
from keras_slicing_lite import HTTPFrontEnd
from keras_slicing_lite import load_bundle
from tests.lite.conftest import call


@pytest.fixture
def front(bundle_dir, toy_profile):
    # The standard library's front end, serve's default; the contract of
    # both front ends is checked in test_http_contract.py.
    server = ElasticServer(load_bundle(bundle_dir), toy_profile, clock="real").start()
    front = HTTPFrontEnd(server, host="127.0.0.1", port=0, max_body_bytes=200_000).start()
    yield front
    front.shutdown()
    server.stop(timeout=10)




def test_batch_is_answered_by_the_model_at_the_chosen_rates(front, reference):
    x, expected = reference
    status, answer = call(front, "POST", "/predict", {"inputs": x[:8].tolist(), "deadline_ms": 100})
    assert status == 200
    for i, (output, rate) in enumerate(zip(answer["outputs"], answer["rates"])):
        np.testing.assert_allclose(output, expected[rate][i], atol=1e-5)
        assert answer["predictions"][i] == int(np.argmax(expected[rate][i]))
    assert answer["output_kind"] == "multiclass_logits"


def test_single_input_with_a_pinned_rate(front, reference):
    x, expected = reference
    status, answer = call(front, "POST", "/predict", {"input": x[3].tolist(), "rate": 0.5})
    assert status == 200 and answer["rate"] == 0.5
    np.testing.assert_allclose(answer["output"], expected[0.5][3], atol=1e-5)


def test_deadline_already_past_is_answered_late(front, reference):
    status, answer = call(front, "POST", "/predict", {"input": reference[0][0].tolist(), "deadline_ms": -1})
    assert status == 200 and answer["late"] is True


@pytest.mark.parametrize(
    "body, status, match",
    [
        (b"{not json", 400, "not valid JSON"),
        ({"inputs": [[1, 2, 3]]}, 400, r"expected input of shape \(batch, 8, 8, 1\)"),
        ({"inputs": [["a"] * 8]}, 400, "list of numbers"),
        (b'{"input": [NaN]}', 400, "NaN is not a JSON number"),
        ({"inputs": np.zeros((1, 8, 8, 1)).tolist(), "rate": 0.3}, 400, r"rate=0\.3 is not in this bundle"),
        ({"inputs": np.zeros((1, 8, 8, 1)).tolist(), "deadline_ms": "soon"}, 400, "deadline_ms must be"),
        ({"inputs": [], "deadline_ms": 5}, 400, "empty"),
        ({"examples": []}, 400, "unknown keys"),
        ([1, 2], 400, "JSON object"),
        ({"inputs": np.zeros((1000, 8, 8, 1)).tolist()}, 413, "max_body_bytes=200000"),
    ],
)
def test_bad_request_gets_a_4xx_with_a_message(front, body, status, match):
    got, answer = call(front, "POST", "/predict", body)
    assert got == status
    assert re.search(match, answer["error"]), answer


def _npy(array, allow_pickle=False):
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


NPY = {"Content-Type": "application/x-npy"}
RAW = {"Content-Type": "application/octet-stream"}


@pytest.mark.parametrize("rate", [1.0, 0.25])
def test_binary_bodies_answer_as_json_does(front, reference, rate):
    x, expected = reference
    batch = x[:8].astype("float32")
    _, by_json = call(front, "POST", "/predict", {"inputs": batch.tolist(), "rate": rate})
    for body, headers in [(_npy(batch), NPY), (batch.astype("<f4").tobytes(), RAW),
                          (_npy(batch.astype(">f8")), NPY)]:
        status, answer = call(front, "POST", f"/predict?rate={rate}", body, headers)
        assert status == 200, answer
        assert answer["rates"] == [rate] * 8
        np.testing.assert_allclose(answer["outputs"], by_json["outputs"], atol=1e-6)
        np.testing.assert_allclose(answer["outputs"], expected[rate][:8], atol=1e-5)
        assert answer["predictions"] == np.argmax(expected[rate][:8], axis=1).tolist()


def test_npy_answer_when_accepted(front, reference):
    x, expected = reference
    connection = http.client.HTTPConnection(*front.address, timeout=30)
    try:
        connection.request("POST", "/predict?rate=0.5", _npy(x[:5]),
                           {**NPY, "Accept": "application/json;q=0.5, application/x-npy"})
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    assert response.status == 200
    assert response.getheader("Content-Type") == "application/x-npy"
    outputs = np.load(io.BytesIO(body), allow_pickle=False)
    assert outputs.shape == (5, 10) and outputs.dtype == np.float32
    np.testing.assert_allclose(outputs, expected[0.5][:5], atol=1e-5)
    assert response.getheader("X-Rates") == "0.5,0.5,0.5,0.5,0.5"
    assert response.getheader("X-Late") == "0,0,0,0,0"
    assert len(response.getheader("X-Latency-Ms").split(",")) == 5


def test_npy_body_is_served_elastically_with_the_query_deadline(front, reference):
    x, expected = reference
    status, answer = call(front, "POST", "/predict?deadline_ms=100", _npy(x[8:14]), NPY)
    assert status == 200 and len(answer["rates"]) == 6
    for i, (output, rate) in enumerate(zip(answer["outputs"], answer["rates"])):
        np.testing.assert_allclose(output, expected[rate][8 + i], atol=1e-5)
    status, answer = call(front, "POST", "/predict?deadline_ms=-1", _npy(x[:1]), NPY)
    assert status == 200 and answer["late"] == [True]


class _Trap:
    """Unpickling it would create `path`: proof that a body was unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def test_pickled_npy_is_refused_and_never_unpickled(front, tmp_path):
    trap = tmp_path / "unpickled"
    body = _npy(np.array([_Trap(trap)], dtype=object), allow_pickle=True)
    status, answer = call(front, "POST", "/predict", body, NPY)
    assert status == 400 and "pickle" in answer["error"]
    assert not trap.exists()


_ZEROS = np.zeros((2, 8, 8, 1), "float32")


@pytest.mark.parametrize(
    "path, body, headers, match",
    [
        ("/predict", _npy(_ZEROS.astype("int32")), NPY, r"floating inputs \(float32\).*x\.dtype=int32"),
        ("/predict", _npy(np.zeros((2, 8, 8), "float32")), NPY, r"expected input of shape \(batch, 8, 8, 1\)"),
        ("/predict", _npy(np.zeros((2, 8, 8, 3), "float32")), NPY, r"axis 3 should be 1"),
        ("/predict", _npy(_ZEROS)[:-5], NPY, r"512 bytes of data, but 507 follow"),
        ("/predict", _npy(_ZEROS) + b"\0", NPY, r"truncated or padded"),
        ("/predict", b"PK\x03\x04 not npy", NPY, r"not a \.npy file"),
        ("/predict", _npy(np.array(["a", "b"])), NPY, r"must hold numbers"),
        ("/predict", _npy(np.full((1, 8, 8, 1), np.nan, "float32")), NPY, "finite"),
        ("/predict", _npy(np.zeros((0, 8, 8, 1), "float32")), NPY, "empty"),
        ("/predict", _ZEROS.tobytes()[:-4], RAW, r"508 bytes, not a positive multiple of 256.*\(8, 8, 1\) in float32"),
        ("/predict", b"", RAW, r"0 bytes, not a positive multiple of 256"),
        ("/predict?rate=0.3", _npy(_ZEROS), NPY, r"rate=0\.3 is not in this bundle"),
        ("/predict?deadline_ms=soon", _npy(_ZEROS), NPY, r"deadline_ms in the query must be a finite number"),
        ("/predict?deadline_ms=5&deadline_ms=6", _npy(_ZEROS), NPY, "more than once"),
        ("/predict?batch=2", _npy(_ZEROS), NPY, r"unknown query parameter 'batch'; allowed: deadline_ms, rate"),
        ("/predict?rate=0.5", json.dumps({"input": _ZEROS[0].tolist(), "rate": 0.5}).encode(), {},
         "rate is given both in the query and in the body"),
        ("/predict", _npy(_ZEROS), {"Content-Type": "image/png"}, r"not valid JSON.*received image/png"),
    ],
)
def test_bad_binary_request_gets_a_400_with_a_message(front, path, body, headers, match):
    status, answer = call(front, "POST", path, body, headers)
    assert status == 400
    assert re.search(match, answer["error"]), answer


def test_oversize_binary_body_is_refused_before_it_is_read(front):
    body = np.zeros((1000, 8, 8, 1), "float32").tobytes()
    status, answer = call(front, "POST", "/predict", body, RAW)
    assert status == 413 and "max_body_bytes=200000" in answer["error"]


def test_wrong_paths_and_methods(front):
    assert call(front, "GET", "/predict")[0] == 405
    assert call(front, "POST", "/health", {})[0] == 405
    assert call(front, "GET", "/nowhere")[0] == 404


def test_health_and_stats(front, reference):
    status, health = call(front, "GET", "/health")
    assert status == 200 and health["status"] == "ok"
    assert health["rates"] == [1.0, 0.75, 0.5, 0.25]
    assert health["input_shape"] == [None, 8, 8, 1] and health["input_dtype"] == "float32"
    call(front, "POST", "/predict", {"inputs": reference[0][:3].tolist()})
    call(front, "POST", "/predict", b"{")
    status, stats = call(front, "GET", "/stats")
    assert stats["server"]["served"] == 3
    assert stats["http"]["client_errors"] == 1


def test_bad_requests_do_not_disturb_good_ones(front, reference):
    x, _ = reference
    statuses, lock = [], threading.Lock()

    def good(k):
        for i in range(10):
            status, _ = call(front, "POST", "/predict", {"input": x[k + i].tolist(), "deadline_ms": 50})
            with lock:
                statuses.append(status)

    def bad():
        for body in [b"{", b'{"inputs": [[1]]}', b"\xff\xfe", b'{"rate": 2}'] * 5:
            assert call(front, "POST", "/predict", body)[0] == 400

    threads = [threading.Thread(target=good, args=(k,)) for k in range(4)]
    threads.append(threading.Thread(target=bad))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert statuses == [200] * 40


def test_health_reports_a_failed_worker(front, reference):
    front.server.bundle.predict = lambda batch, rate: 1 / 0
    status, answer = call(front, "POST", "/predict", {"input": reference[0][0].tolist()})
    assert status == 500 and "ZeroDivisionError" in answer["error"]
    status, health = call(front, "GET", "/health")
    assert status == 503 and health["status"] == "failed"
    assert call(front, "POST", "/predict", {"input": reference[0][0].tolist()})[0] == 503


def test_serve_command_answers_and_stops_on_sigterm(bundle_dir, reference, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen(
        [sys.executable, "-m", "keras_slicing_lite", "serve", str(bundle_dir), "--port", "0",
         "--deadline_ms", "50"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        line = process.stdout.readline()
        assert "serving" in line, process.stderr.read()
        host, port = line.rsplit("http://", 1)[1].strip().split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        connection.request("POST", "/predict", json.dumps({"input": reference[0][0].tolist()}))
        answer = json.loads(connection.getresponse().read())
        np.testing.assert_allclose(answer["output"], reference[1][answer["rate"]][0], atol=1e-5)
        connection.close()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


def test_query_fields_and_raw_bodies_of_variable_shape():
    from keras_slicing_lite import http_body

    assert http_body.query_fields("deadline_ms=null&rate=0.5") == {"deadline_ms": None, "rate": 0.5}
    assert http_body.query_fields("") == {}
    with pytest.raises(ValueError, match="rate in the query must be a finite number"):
        http_body.query_fields("rate=inf")
    x = np.arange(12, dtype="<i4").reshape(2, 3, 2)
    np.testing.assert_array_equal(http_body.parse_raw(x.tobytes(), (None, 3, 2), "int32"), x)
    with pytest.raises(ValueError, match=r"needs a fixed example shape.*\(batch, None, 2\)"):
        http_body.parse_raw(x.tobytes(), (None, None, 2), "int32")
