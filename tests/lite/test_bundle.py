import json

import numpy as np
import pytest

from keras_slicing_lite import load_bundle
from tests.lite.conftest import RATES


def test_rates_are_read_widest_first(bundle_dir):
    assert load_bundle(bundle_dir).rates == RATES


def test_manifest_is_exposed_as_written(bundle_dir):
    written = json.loads((bundle_dir / "manifest.json").read_text())
    assert load_bundle(bundle_dir).manifest == written


def test_manifest_copy_cannot_change_the_bundle(bundle_dir):
    bundle = load_bundle(bundle_dir)
    bundle.manifest["rates"].clear()
    assert len(bundle.manifest["rates"]) == len(RATES)


@pytest.mark.parametrize("rate", RATES)
def test_predict_matches_keras_at_each_rate(bundle_dir, reference, rate):
    x, expected = reference
    got = load_bundle(bundle_dir).predict(x, rate=rate)
    np.testing.assert_allclose(got, expected[rate], atol=1e-5)


def test_rate_none_means_widest(bundle_dir, reference):
    x, expected = reference
    np.testing.assert_allclose(
        load_bundle(bundle_dir).predict(x), expected[1.0], atol=1e-5
    )


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_predict_accepts_any_batch_size(bundle_dir, reference, batch_size):
    x, expected = reference
    got = load_bundle(bundle_dir).predict(x[:batch_size], rate=0.5)
    np.testing.assert_allclose(got, expected[0.5][:batch_size], atol=1e-5)


def test_alternating_batch_sizes_give_the_same_answers(bundle_dir, reference):
    x, expected = reference
    bundle = load_bundle(bundle_dir, max_cached_shapes=1)
    for size in (3, 64, 3, 10):
        np.testing.assert_allclose(
            bundle.predict(x[:size], rate=0.25), expected[0.25][:size], atol=1e-5
        )


def test_empty_batch_gives_empty_output(bundle_dir, reference):
    x, _ = reference
    assert load_bundle(bundle_dir).predict(x[:0], rate=1.0).shape == (0, 10)


def test_float64_input_is_cast(bundle_dir, reference):
    x, expected = reference
    got = load_bundle(bundle_dir).predict(x.astype("float64"), rate=0.75)
    np.testing.assert_allclose(got, expected[0.75], atol=1e-5)


def test_rate_entry_returns_manifest_costs(bundle_dir):
    written = json.loads((bundle_dir / "manifest.json").read_text())
    entry = load_bundle(bundle_dir).rate_entry(0.5)
    assert entry == next(e for e in written["rates"] if e["rate"] == 0.5)


def test_int8_bundle_quantizes_float_input(int8_bundle_dir, reference):
    x, _ = reference
    bundle = load_bundle(int8_bundle_dir)
    quantization = bundle.manifest["input"]["quantization"]
    scale, zero_point = quantization["scale"], quantization["zero_point"]
    quantized = np.clip(np.round(x / scale) + zero_point, -128, 127).astype("int8")
    np.testing.assert_array_equal(
        bundle.predict(x, rate=0.25), bundle.predict(quantized, rate=0.25)
    )


def test_int8_bundle_dequantizes_output(int8_bundle_dir, reference):
    x, expected = reference
    output = load_bundle(int8_bundle_dir).predict(x, rate=1.0)
    assert output.dtype == np.float32
    agreement = np.mean(output.argmax(-1) == expected[1.0].argmax(-1))
    assert agreement >= 0.9
