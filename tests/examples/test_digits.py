import json

import numpy as np
import pytest

from tests.examples.loader import load_example


def _load_example():
    return load_example("digits")


@pytest.mark.slow
def test_demo_writes_model_bundle_results_and_plot(tmp_path):
    results = _load_example().run(
        tmp_path, epochs=2, baselines=True, latency_repeats=3, verbose=0
    )
    rows = results["widths"]
    assert [r["rate"] for r in rows] == [1.0, 0.75, 0.5, 0.25]
    macs = [r["macs"] for r in rows]
    assert macs == sorted(macs, reverse=True) and macs[-1] < macs[0] / 8
    for row in rows:
        assert row["accuracy"] > 0.2  # chance is 0.1, even after 2 epochs
        assert abs(row["tflite_accuracy"] - row["accuracy"]) < 0.01
        assert row["tflite_latency_ms"] > 0 and row["tflite_bytes"] > 0
        assert 0.0 <= row["baseline_accuracy"] <= 1.0
    assert json.loads((tmp_path / "results.json").read_text()) == results
    manifest = json.loads((tmp_path / "tflite" / "manifest.json").read_text())
    assert len(manifest["rates"]) == 4
    assert (tmp_path / "digits_cnn.keras").is_file()
    png = (tmp_path / "accuracy_vs_macs.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_plain_baseline_has_the_extracted_width():
    example = _load_example()
    sliced = example.sliced_cnn()
    import keras_slicing

    for rate in (1.0, 0.5, 0.25):
        plain = example.plain_cnn(rate)
        extracted = keras_slicing.extract_submodel(sliced, rate)
        assert plain.count_params() == extracted.count_params()
        x = np.zeros((1, 8, 8, 1), "float32")
        assert plain(x).shape == extracted(x).shape
