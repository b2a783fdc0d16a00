"""Bundles for the edge-runtime tests, exported once per session.

The bundles come from `keras_slicing.export_tflite` on a tiny sliced CNN
trained briefly on digits; the reference outputs come from the Keras model
itself at each rate, never from the runtime under test.
"""

import http.client
import json
import pathlib
import sys

import keras
import numpy as np
import pytest
import keras_slicing
from keras_slicing.model import SlicingModel
from tests.sliced_models import digits_split

try:
    import keras_slicing_lite  # noqa: F401
except ImportError:  # not installed: test the source tree
    sys.path.insert(0, str(pathlib.Path(__file__).parents[2] / "tflite"))

RATES = (1.0, 0.75, 0.5, 0.25)


def _sliced_cnn():
    L = keras_slicing.layers
    x = keras.Input((8, 8, 1), name="image")
    r = keras_slicing.rate_input()
    h = L.SlicedConv2D(
        16, 3, strides=2, padding="same", slice_input=False, activation="relu"
    )(x, r)
    h = L.SlicedFlatten()(h)
    y = L.SlicedDense(10, slice_output=False, name="logits")(h, r)
    return SlicingModel([x, r], y, rates=RATES, scheduler="all", seed=0)


@pytest.fixture(scope="session")
def digits():
    return digits_split()


@pytest.fixture(scope="session")
def trained_model(digits):
    keras.utils.set_random_seed(0)
    x_train, y_train, _, _ = digits
    model = _sliced_cnn()
    model.compile(
        keras.optimizers.Adam(1e-2),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x_train, y_train, epochs=2, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="session")
def reference(trained_model, digits):
    """Keras outputs of every rate on the first 64 test images."""
    x = digits[2][:64]
    return x, {
        rate: keras.ops.convert_to_numpy(
            trained_model([x, np.full(len(x), rate, "float32")])
        )
        for rate in RATES
    }


@pytest.fixture(scope="session")
def bundle_dir(trained_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("bundles") / "digits_float32"
    keras_slicing.export_tflite(trained_model, path, rates=RATES)
    return path


@pytest.fixture(scope="session")
def single_file_bundle_dir(trained_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("bundles") / "digits_single_file"
    keras_slicing.export_tflite(trained_model, path, rates=RATES, single_file=True)
    return path


@pytest.fixture(scope="session")
def int8_bundle_dir(trained_model, digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("bundles") / "digits_int8"
    keras_slicing.export_tflite(
        trained_model,
        path,
        rates=(1.0, 0.25),
        quantization="int8",
        representative_data=digits[0],
        int8_io=True,
    )
    return path


def call(front, method, path, body=None, headers=None):
    """`(status, answer)` of one request to a running front end.

    `body` that is not bytes or text is sent as JSON. A JSON answer comes
    back parsed, an empty one as None, any other as its bytes (a transport's
    own replies, metrics text).
    """
    connection = http.client.HTTPConnection(*front.address, timeout=30)
    try:
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body).encode()
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
        if not data:
            return response.status, None
        if response.getheader("Content-Type", "").startswith("application/json"):
            return response.status, json.loads(data)
        return response.status, data
    finally:
        connection.close()


def edit_manifest(path, edit):
    """Applies `edit` to the parsed manifest of the bundle at `path`."""
    manifest_path = path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    edit(manifest)
    manifest_path.write_text(json.dumps(manifest))


def toy_latency_ms(rate, batch_size):
    """The made-up cost of the `toy_profile`: `(1 + batch_size) * rate` ms."""
    return (1 + batch_size) * rate


@pytest.fixture
def toy_profile():
    """A hand-made latency profile: timing in tests never depends on the machine."""
    from keras_slicing_lite import LatencyProfile

    return LatencyProfile(
        {r: {b: toy_latency_ms(r, b) for b in (1, 2, 4, 8)} for r in RATES}
    )
