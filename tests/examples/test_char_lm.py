import json

import numpy as np

import keras_slicing
import pytest
from tests.examples.loader import load_example


def _load_example():
    return load_example("char_lm")


def test_pydoc_corpus_is_split_by_position_without_overlap():
    example = _load_example()
    text = example.load_text()
    assert len(text) > 400_000
    train, val, test = example.split_text(text)
    assert train + val + test == text
    assert abs(len(val) - 0.05 * len(text)) <= 1 and abs(len(test) - 0.05 * len(text)) <= 1


def test_windows_predict_the_next_character():
    example = _load_example()
    vocab = example.vocabulary("abcab")
    x, y = example.windows("abcabz", vocab, 2)
    assert x.tolist() == [[1, 2], [3, 1]] and y.tolist() == [[2, 3], [1, 2]]
    assert example.windows("az", vocab, 1)[1].tolist() == [[0]]  # unknown -> 0


def test_bits_per_character_of_uniform_logits_is_log2_of_the_symbols():
    bpc = _load_example().bits_per_character(np.zeros((2, 3, 16)), np.ones((2, 3), int))
    assert abs(bpc - 4.0) < 1e-9


def test_training_order_makes_shuffled_passes_over_every_window():
    order = _load_example().training_order(5, steps=3, batch_size=4, seed=0)
    assert len(order) == 12
    assert sorted(order[:5]) == sorted(order[5:10]) == list(range(5))
    assert list(order[:5]) != list(range(5))


def _text_file(tmp_path):
    data = tmp_path / "text.txt"
    data.write_text("the quick brown fox jumps over the lazy dog. " * 60, encoding="utf-8")
    return str(data)


@pytest.mark.slow
def test_tiny_run_trains_exports_and_checks_every_width(tmp_path):
    results = _load_example().run(
        tmp_path / "out", data_file=_text_file(tmp_path), seq_len=8,
        embedding_dim=8, units=16, steps=2, batch_size=8, rates=(1.0, 0.5),
        baselines=False, verbose=0,
    )
    rows = results["widths"]
    assert [r["rate"] for r in rows] == [1.0, 0.5]
    assert rows[0]["macs_per_char"] > rows[1]["macs_per_char"]
    for row in rows:
        assert abs(row["tflite_test_bpc"] - row["test_bpc"]) < 1e-3
        assert 0 < row["test_bpc"] < 8
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == results
    assert results["curve"]["steps"] == [1, 2]  # curve_points > steps: every step
    assert [sorted(point) for point in results["curve"]["val_bpc"]] == [["0.5", "1"]] * 2
    manifest = keras_slicing.export.read_manifest(tmp_path / "out" / "tflite")
    assert [e["rate"] for e in manifest["rates"]] == [1.0, 0.5]
    ops = keras_slicing.export.tflite_op_names(
        (tmp_path / "out" / "tflite" / "rate_0.5.tflite").read_bytes()
    )
    assert "FULLY_CONNECTED" in ops and "TANH" in ops


@pytest.mark.slow
def test_baseline_trains_a_plain_model_per_width():
    example = _load_example()
    x = np.random.default_rng(0).integers(0, 20, (8, 8))
    bpc = example.train_baselines(
        ((x, x), (x, x)), lambda rate: example.plain_lm(20, 8, 8, 16, rate),
        batch_size=8, learning_rate=1e-3, rates=(0.5,), seed=0,
    )
    assert list(bpc) == [0.5] and 3.0 < bpc[0.5] < 5.5  # log2(20) = 4.3 untrained


def test_plain_baseline_has_the_extracted_width():
    example = _load_example()
    sizes = (20, 8, 16, 32)
    sliced = example.sliced_lm(*sizes)
    for rate in (1.0, 0.25):
        extracted = keras_slicing.extract_submodel(sliced, rate)
        assert example.plain_lm(*sizes, rate).count_params() == extracted.count_params()
