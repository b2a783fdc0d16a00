import numpy as np

import keras_slicing
import pytest
from tests.examples.loader import load_example


def _load_example():
    return load_example("text_transformer")


@pytest.mark.slow
def test_tiny_run_trains_exports_and_checks_every_width(tmp_path):
    data = tmp_path / "text.txt"
    data.write_text("pack my box with five dozen liquor jugs. " * 60, encoding="utf-8")
    results = _load_example().run(
        tmp_path / "out", data_file=str(data), seq_len=8, model_dim=16,
        num_heads=2, ffn_units=32, num_blocks=1, steps=2, batch_size=8,
        rates=(1.0, 0.5), baselines=False, verbose=0,
    )
    rows = results["widths"]
    assert [r["rate"] for r in rows] == [1.0, 0.5]
    assert rows[0]["macs_per_char"] > rows[1]["macs_per_char"]
    for row in rows:
        assert abs(row["tflite_test_bpc"] - row["test_bpc"]) < 1e-3
    ops = keras_slicing.export.tflite_op_names(
        (tmp_path / "out" / "tflite" / "rate_0.5.tflite").read_bytes()
    )
    assert "BATCH_MATMUL" in ops or "FULLY_CONNECTED" in ops


def test_plain_baseline_has_the_extracted_width():
    example = _load_example()
    args = (20, 8, 16, 4, 32, 2)  # vocabulary, length, width, heads, units, blocks
    sliced = example.sliced_transformer(*args)
    x = np.zeros((1, 8), "int32")
    for rate, heads in ((1.0, 4), (0.75, 3), (0.25, 1)):
        plain = example.plain_transformer(*args, rate)
        extracted = keras_slicing.extract_submodel(sliced, rate)
        assert plain.count_params() == extracted.count_params()
        assert extracted.get_layer("block_1_attention").num_heads == heads
        assert plain(x).shape == extracted(x).shape
