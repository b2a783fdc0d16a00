"""A single-file bundle: one `.tflite`, one signature per rate.

References come from the Keras model at each rate (`reference`), never from
the runtime under test.
"""

import http.client
import json
import shutil

import numpy as np
import pytest

from keras_slicing_lite import BundleError
from keras_slicing_lite import ElasticServer
from keras_slicing_lite import HTTPFrontEnd
from keras_slicing_lite import Request
from keras_slicing_lite import load_bundle
from tests.lite.conftest import edit_manifest
from tests.lite.conftest import RATES

MS = 1e-3


@pytest.fixture
def bundle_copy(single_file_bundle_dir, tmp_path):
    path = tmp_path / "bundle"
    shutil.copytree(single_file_bundle_dir, path)
    return path


def test_every_rate_reads_the_one_file(single_file_bundle_dir):
    bundle = load_bundle(single_file_bundle_dir)
    assert bundle.rates == RATES
    assert {bundle.rate_entry(r)["file"] for r in RATES} == {"model.tflite"}
    assert [p.name for p in single_file_bundle_dir.glob("*.tflite")] == ["model.tflite"]


@pytest.mark.parametrize("rate", RATES)
def test_predict_matches_keras_at_each_rate(single_file_bundle_dir, reference, rate):
    x, expected = reference
    np.testing.assert_allclose(
        load_bundle(single_file_bundle_dir).predict(x, rate), expected[rate], atol=1e-5
    )


def test_switching_rates_and_batch_sizes_keeps_answers(single_file_bundle_dir, reference):
    x, expected = reference
    bundle = load_bundle(single_file_bundle_dir)
    for rate, batch in [(1.0, 5), (0.25, 1), (1.0, 1), (0.5, 5), (0.25, 5), (1.0, 5)]:
        np.testing.assert_allclose(
            bundle.predict(x[:batch], rate), expected[rate][:batch], atol=1e-5
        )


def test_missing_signature_is_refused(bundle_copy):
    edit_manifest(bundle_copy, lambda m: m["rates"][2].update(signature="rate_0.3"))
    with pytest.raises(BundleError, match="no signature 'rate_0.3'"):
        load_bundle(bundle_copy)


def test_tampered_file_is_refused(bundle_copy):
    target = bundle_copy / "model.tflite"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 mismatch.*model.tflite"):
        load_bundle(bundle_copy)


def test_signature_without_format_version_3_is_refused(bundle_copy):
    edit_manifest(bundle_copy, lambda m: m.update(format_version=2))
    with pytest.raises(BundleError, match="'signature' needs format_version 3"):
        load_bundle(bundle_copy)


def test_version_3_entry_without_signature_is_refused(bundle_copy):
    edit_manifest(bundle_copy, lambda m: m["rates"][1].pop("signature"))
    with pytest.raises(BundleError, match="rate=0.75 must name in 'signature'"):
        load_bundle(bundle_copy)


def test_two_rates_naming_one_signature_are_refused(bundle_copy):
    edit_manifest(bundle_copy, lambda m: m["rates"][1].update(signature="rate_1"))
    with pytest.raises(BundleError, match="more than one rate"):
        load_bundle(bundle_copy)


def test_server_answers_at_the_chosen_rates(single_file_bundle_dir, toy_profile, reference):
    x, expected = reference
    server = ElasticServer(load_bundle(single_file_bundle_dir), toy_profile)
    requests = [Request(x[i], arrival_s=0.0, deadline_s=(2 + i) * MS) for i in range(30)]
    responses = server.replay(requests)
    assert len({r.rate for r in responses}) > 1
    for i, response in enumerate(responses):
        np.testing.assert_allclose(response.output, expected[response.rate][i], atol=1e-5)


def test_http_front_end_serves_the_single_file(single_file_bundle_dir, toy_profile, reference):
    x, expected = reference
    server = ElasticServer(
        load_bundle(single_file_bundle_dir), toy_profile, clock="real"
    ).start()
    front = HTTPFrontEnd(server, host="127.0.0.1", port=0).start()
    try:
        connection = http.client.HTTPConnection(*front.address, timeout=30)
        body = json.dumps({"inputs": x[:4].tolist(), "deadline_ms": 100})
        connection.request("POST", "/predict", body=body)
        response = connection.getresponse()
        answer = json.loads(response.read())
        connection.close()
    finally:
        front.shutdown()
        server.stop(timeout=10)
    assert response.status == 200
    for i, (output, rate) in enumerate(zip(answer["outputs"], answer["rates"])):
        np.testing.assert_allclose(output, expected[rate][i], atol=1e-5)
