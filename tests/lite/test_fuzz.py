"""Property tests: any request body, rate or manifest is refused cleanly or served right.

Hypothesis draws JSON values, raw bytes, query rates and manifest edits.
A request is answered by the `ServingAPI` of a live server (no sockets, so
that many fit in seconds): a 4xx with a JSON error naming a field, or a 200
whose outputs are the bundle's at the width reported, never a 5xx. A
manifest loads or raises `BundleError`. No descriptor is left open.
"""

import concurrent.futures
import json
import os
import shutil
import time

import numpy as np
import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from keras_slicing_lite import BundleError
from keras_slicing_lite import ElasticServer
from keras_slicing_lite import load_bundle
from keras_slicing_lite.http_api import Pending
from keras_slicing_lite.http_api import ServingAPI


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    # Overrides the suite's reset of Keras state: nothing here uses Keras
    # outside the session fixtures, and the reset costs about a second.
    yield


SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
EXAMPLE = np.zeros((8, 8, 1)).tolist()

scalars = st.one_of(
    st.none(), st.booleans(), st.text(max_size=5),
    st.integers(min_value=-(10**500), max_value=10**500),
    st.floats(allow_nan=True, allow_infinity=True),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=3), inner, max_size=3)
), max_leaves=20)
# Bodies near a valid request: the known keys, with valid or drawn values.
bodies = st.fixed_dictionaries({}, optional={
    "inputs": st.one_of(st.just([EXAMPLE]), values),
    "input": st.one_of(st.just(EXAMPLE), values),
    "rate": st.one_of(st.sampled_from([1.0, 0.5, 0.25, 0.3]), values),
    "deadline_ms": st.one_of(st.just(50), values),
})


def _open_descriptors():
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(scope="module")
def api(bundle_dir):
    from tests.lite.conftest import RATES
    from keras_slicing_lite import LatencyProfile

    profile = LatencyProfile({r: {b: (1 + b) * r for b in (1, 2, 4, 8)} for r in RATES})
    server = ElasticServer(load_bundle(bundle_dir), profile, clock="real", max_queue=64).start()
    yield ServingAPI(server)
    server.stop(timeout=10)


def _answer(api, target, body, headers=None):
    result = api.handle("POST", target, headers or {"content-type": "application/json"},
                        body, time.perf_counter())
    if isinstance(result, Pending):
        concurrent.futures.wait(result.futures, timeout=30)
        result = result.reply()
    return result


def _check(api, reply, body=None):
    """4xx with a JSON error naming a field, or a correct 200."""
    assert reply.status < 500, reply.body[:300]
    if reply.status != 200:
        answer = json.loads(reply.body)
        assert 400 <= reply.status < 500 and answer["error"] and "field" in answer
        return
    answer = json.loads(reply.body)
    data = json.loads(body)
    x = np.asarray([data["input"]] if "input" in data else data["inputs"], "float32")
    outputs = [answer["output"]] if "output" in answer else answer["outputs"]
    rates = [answer["rate"]] if "rate" in answer else answer["rates"]
    for example, output, rate in zip(x, outputs, rates):
        expected = api.bundle.predict(example[None], rate)[0]
        np.testing.assert_allclose(output, expected, atol=1e-5)


@SETTINGS
@given(body=st.one_of(bodies, values))
def test_any_json_body_is_refused_cleanly_or_served_right(api, body):
    before = _open_descriptors()
    encoded = json.dumps(body).encode()
    _check(api, _answer(api, "/predict", encoded), encoded)
    assert _open_descriptors() == before


@SETTINGS
@given(raw=st.binary(max_size=300), kind=st.sampled_from(
    ["application/json", "application/x-npy", "application/octet-stream"]))
def test_any_bytes_are_refused_with_a_4xx(api, raw, kind):
    reply = _answer(api, "/predict", raw, {"content-type": kind})
    assert 400 <= reply.status < 500 or reply.status == 200
    assert reply.status != 200 or kind != "application/json"


@SETTINGS
@given(rate=st.one_of(st.text(max_size=12), st.integers(-(10**400), 10**400).map(str),
                      st.floats().map(repr), st.sampled_from(["0.5", "1", "0.25", "true"])))
def test_any_query_rate_is_refused_or_served_at_that_rate(api, rate):
    body = json.dumps({"input": EXAMPLE}).encode()
    from urllib.parse import quote

    reply = _answer(api, "/predict?rate=" + quote(rate), body)
    _check(api, reply, body)
    if reply.status == 200:
        assert json.loads(reply.body)["rate"] == float(rate)


# Paths into the manifest that a tampered file may change.
MANIFEST_PATHS = [
    ("format_version",), ("output_kind",), ("metric",), ("input",), ("input", "shape"),
    ("input", "dtype"), ("output", "shape"), ("rates",), ("rates", 0), ("rates", 0, "rate"),
    ("rates", 0, "file"), ("rates", 0, "sha256"), ("rates", 0, "bytes"),
    ("rates", 1, "macs"), ("rates", 1, "accuracy"), ("input", "quantization"),
]


@pytest.fixture(scope="module")
def bundle_copy(bundle_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "bundle"
    shutil.copytree(bundle_dir, path)
    return path


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(where=st.sampled_from(MANIFEST_PATHS), value=values)
def test_any_tampered_manifest_loads_or_is_a_bundle_error(bundle_dir, bundle_copy, where, value):
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    node = manifest
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    before = _open_descriptors()
    try:
        load_bundle(bundle_copy)
    except BundleError as error:
        assert "manifest.json" in str(error) or ".tflite" in str(error)
    assert _open_descriptors() == before
