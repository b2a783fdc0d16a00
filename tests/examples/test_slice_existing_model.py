import json

from tests.examples.loader import load_example


def test_example_slices_finetunes_and_exports(tmp_path):
    results = load_example("slice_existing_model").run(
        tmp_path, epochs=2, finetune_epochs=1
    )
    rows = results["widths"]
    assert [r["rate"] for r in rows] == [1.0, 0.75, 0.5, 0.25]
    macs = [r["macs"] for r in rows]
    assert macs == sorted(macs, reverse=True) and macs[-1] < macs[0] / 8
    for row in rows:
        assert 0.0 <= row["accuracy_converted"] <= 1.0
        assert row["accuracy_finetuned"] > 0.2  # chance is 0.1
        assert abs(row["tflite_accuracy"] - row["accuracy_finetuned"]) < 0.01
    assert json.loads((tmp_path / "results.json").read_text()) == results
    manifest = json.loads((tmp_path / "tflite" / "manifest.json").read_text())
    assert len(manifest["rates"]) == 4
    assert (tmp_path / "sliced_cnn.keras").is_file()
