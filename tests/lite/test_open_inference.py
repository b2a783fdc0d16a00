"""The Open Inference Protocol (KServe v2), spoken to a client written elsewhere.

`tritonclient.http` (NVIDIA's Triton client) checks health, reads the
model's metadata and runs inference, with tensors as JSON and as binary
data; the outputs must be the Keras model's at the width reported.
"""

import json

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from keras_slicing_lite import ElasticServer
from keras_slicing_lite import HTTPFrontEnd
from keras_slicing_lite import LatencyProfile
from keras_slicing_lite import load_bundle
from keras_slicing_lite.asgi_server import ASGIFrontEnd


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    # Overrides the suite's reset of Keras state: nothing here uses Keras
    # outside the session fixtures, and the reset costs about a second.
    yield


MODEL = "digits"


@pytest.fixture(scope="module", params=["asgi", "stdlib"])
def client(request, bundle_dir):
    from tests.lite.conftest import RATES
    from tests.lite.conftest import toy_latency_ms

    profile = LatencyProfile({r: {b: toy_latency_ms(r, b) for b in (1, 2, 4, 8)} for r in RATES})
    front_class = ASGIFrontEnd if request.param == "asgi" else HTTPFrontEnd
    server = ElasticServer(load_bundle(bundle_dir), profile, clock="real").start()
    front = front_class(server, port=0, model_name=MODEL).start()
    host, port = front.address
    client = triton.InferenceServerClient(f"{host}:{port}", network_timeout=30)
    yield client
    client.close()
    front.shutdown()
    server.stop(timeout=10)


def _input(x, binary):
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x.astype("float32"), binary_data=binary)
    return tensor


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL)
    metadata = client.get_model_metadata(MODEL)
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 8, 8, 1]}]
    assert metadata["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]


@pytest.mark.parametrize("binary", [True, False])
def test_infer_at_a_requested_width(client, reference, binary):
    x, expected = reference
    result = client.infer(
        MODEL, [_input(x[:4], binary)],
        outputs=[triton.InferRequestedOutput("output", binary_data=binary)],
        parameters={"rate": 0.5, "deadline_ms": 1000},
    )
    np.testing.assert_allclose(result.as_numpy("output"), expected[0.5][:4], atol=1e-5)
    parameters = result.get_response()["parameters"]
    assert parameters["rate"] == 0.5 and parameters["rates"] == "0.5,0.5,0.5,0.5"


def test_infer_lets_the_server_choose_and_reports_each_width(client, reference):
    x, expected = reference
    result = client.infer(MODEL, [_input(x[:3], True)])
    parameters = result.get_response()["parameters"]
    rates = [float(r) for r in parameters["rates"].split(",")]
    out = result.as_numpy("output")
    for i, rate in enumerate(rates):
        np.testing.assert_allclose(out[i], expected[rate][i], atol=1e-5)
    assert parameters["late"] == "0,0,0"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"parameters": {"rate": 0.3}}, r"rate=0\.3 is not"),
        ({"parameters": {"rate": "0.5"}}, "rate must be a finite number"),
        ({"parameters": {"priority_level": 1}}, "unknown parameters"),
        ({"model_name": "other"}, "no model named 'other'"),
    ],
)
def test_bad_infer_requests_are_refused_with_the_reason(client, reference, kwargs, match):
    x = reference[0][:1]
    kwargs = {"model_name": MODEL, "inputs": [_input(x, False)], **kwargs}
    with pytest.raises(InferenceServerException, match=match):
        client.infer(**kwargs)


def test_wrong_shape_names_the_input(client):
    tensor = triton.InferInput("input", [1, 3], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3), "float32"), binary_data=False)
    with pytest.raises(InferenceServerException, match=r"expected input of shape") as caught:
        client.infer(MODEL, [tensor])
    assert "inputs[0]" in json.dumps(str(caught.value))
