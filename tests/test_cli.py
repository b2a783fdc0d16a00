import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from absl import app
from absl import flags

import keras_slicing
import keras_slicing_cli as cli

L = keras_slicing.layers
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _invoke(*argv):
    """Runs the console script in-process, as absl's `app.run` would."""
    try:
        return cli.main(flags.FLAGS(["keras-slicing", *argv]))
    finally:
        flags.FLAGS.unparse_flags()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    keras.utils.set_random_seed(0)
    x = keras.Input((6, 6, 1), name="image")
    r = keras_slicing.rate_input()
    h = L.SlicedConv2D(8, 3, slice_input=False, activation="relu")(x, r)
    h = keras.layers.GlobalAveragePooling2D()(h)
    y = L.SlicedDense(3, slice_output=False, name="scores")(h, r)
    keras.Model([x, r], y, name="tiny").save(root / "tiny.keras")
    data = np.random.default_rng(0).random((40, 6, 6, 1)).astype("float32")
    np.save(root / "inputs.npy", data)
    np.savez(root / "eval.npz", x=data, y=np.arange(40) % 3)
    return root


def _manifest(path):
    return json.loads((path / "manifest.json").read_text(encoding="utf-8"))


def test_export_writes_a_bundle_of_the_requested_rates(files, tmp_path):
    out = tmp_path / "bundle"
    assert _invoke("export", str(files / "tiny.keras"), str(out), "--rates=1,0.5") == 0
    manifest = _manifest(out)
    assert manifest["model_name"] == "tiny"
    assert [e["rate"] for e in manifest["rates"]] == [1.0, 0.5]
    assert sorted(os.listdir(out)) == [
        "manifest.json",
        "rate_0.5.tflite",
        "rate_1.tflite",
    ]


def test_export_int8_reads_representative_data_from_npy(files, tmp_path):
    out = tmp_path / "bundle"
    code = _invoke(
        "export",
        str(files / "tiny.keras"),
        str(out),
        "--rates=0.25",
        "--quantization=int8",
        f"--representative_data={files / 'inputs.npy'}",
        "--int8_io",
    )
    assert code == 0
    manifest = _manifest(out)
    assert manifest["quantization"] == "int8"
    assert manifest["input"]["dtype"] == "int8"


def test_export_records_accuracy_from_evaluation_npz(files, tmp_path):
    out = tmp_path / "bundle"
    code = _invoke(
        "export",
        str(files / "tiny.keras"),
        str(out),
        "--rates=1",
        f"--evaluation_data={files / 'eval.npz'}",
    )
    assert code == 0
    accuracy = _manifest(out)["rates"][0]["accuracy"]
    assert 0.0 <= accuracy <= 1.0


def test_export_int8_without_representative_data_fails_clearly(
    files, tmp_path, capsys
):
    out = tmp_path / "bundle"
    code = _invoke(
        "export", str(files / "tiny.keras"), str(out), "--quantization=int8"
    )
    assert code == 1
    assert "representative_data" in capsys.readouterr().err
    assert not out.exists()


def test_info_prints_one_row_per_rate(files, tmp_path, capsys):
    out = tmp_path / "bundle"
    _invoke("export", str(files / "tiny.keras"), str(out), "--rates=1,0.5,0.25")
    capsys.readouterr()
    assert _invoke("info", str(out)) == 0
    printed = capsys.readouterr().out
    assert "tiny: keras-slicing-bundle v2, float32" in printed
    assert "image: [None, 6, 6, 1] float32" in printed
    for name in ("rate_1.tflite", "rate_0.5.tflite", "rate_0.25.tflite"):
        assert name in printed


def test_info_refuses_a_bundle_with_a_changed_file(files, tmp_path, capsys):
    out = tmp_path / "bundle"
    _invoke("export", str(files / "tiny.keras"), str(out), "--rates=1")
    with open(out / "rate_1.tflite", "ab") as handle:
        handle.write(b"\0")
    assert _invoke("info", str(out)) == 1
    assert "truncated or replaced" in capsys.readouterr().err


def test_bench_prints_a_latency_per_rate(files, tmp_path, capsys):
    out = tmp_path / "bundle"
    _invoke("export", str(files / "tiny.keras"), str(out), "--rates=1,0.5")
    capsys.readouterr()
    assert _invoke("bench", str(out), "--repeats=2", "--batch_size=3") == 0
    rows = capsys.readouterr().out.splitlines()
    assert "batch 3, 1 thread(s)" in rows[0]
    latencies = {row.split()[0]: float(row.split()[1]) for row in rows[2:]}
    assert set(latencies) == {"1", "0.5"}
    assert all(ms > 0 for ms in latencies.values())


def test_unknown_command_is_a_usage_error():
    with pytest.raises(app.UsageError, match="export, info or bench"):
        _invoke("convert", "model.keras")


def test_wrong_number_of_arguments_is_a_usage_error():
    with pytest.raises(app.UsageError, match="'export' takes 2"):
        _invoke("export", "model.keras")


def test_help_prints_the_commands_and_their_flags():
    result = subprocess.run(
        [sys.executable, "-m", "keras_slicing_cli", "--help"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0
    for expected in ("export MODEL.keras OUT_DIR", "info BUNDLE", "bench BUNDLE",
                     "--evaluation_data", "--num_threads", "--quantization"):
        assert expected in result.stdout
    assert "Try --helpfull" not in result.stdout
    assert "tensorflow.python" not in result.stdout and len(result.stdout.splitlines()) < 60


def test_evaluation_data_from_npy_is_refused_clearly(files, tmp_path, capsys):
    out = tmp_path / "bundle"
    code = _invoke("export", str(files / "tiny.keras"), str(out),
                   f"--evaluation_data={files / 'inputs.npy'}")
    assert code == 1
    assert "needs inputs and labels: an .npz with arrays 'x' and 'y'" in capsys.readouterr().err
    assert not out.exists()


def test_representative_data_may_be_an_npz(files, tmp_path):
    np.savez(tmp_path / "calib.npz", x=np.load(files / "inputs.npy"))
    out = tmp_path / "bundle"
    assert _invoke("export", str(files / "tiny.keras"), str(out), "--rates=0.5",
                   "--quantization=int8",
                   f"--representative_data={tmp_path / 'calib.npz'}") == 0
    assert _manifest(out)["quantization"] == "int8"


def test_module_runs_as_a_console_script(files, tmp_path):
    out = tmp_path / "bundle"
    _invoke("export", str(files / "tiny.keras"), str(out), "--rates=0.5")
    result = subprocess.run(
        [sys.executable, "-m", "keras_slicing_cli", "info", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "rate_0.5.tflite" in result.stdout


def test_export_keeps_the_saved_compile_settings(tmp_path, capsys):
    # A single linear unit is binary logits or regression: only the saved
    # loss tells, and the Python API reads it from the compiled model.
    x = keras.Input((4,), name="features")
    r = keras_slicing.rate_input()
    h = L.SlicedDense(8, slice_input=False)(x, r)
    model = keras.Model([x, r], L.SlicedDense(1, slice_output=False)(h, r), name="reg")
    model.compile("sgd", "mse")
    model.save(tmp_path / "reg.keras")
    data = np.random.default_rng(0).random((10, 4)).astype("float32")
    np.savez(tmp_path / "eval.npz", x=data, y=data.sum(axis=1))
    out = tmp_path / "bundle"
    code = _invoke("export", str(tmp_path / "reg.keras"), str(out), "--rates=1,0.5",
                   f"--evaluation_data={tmp_path / 'eval.npz'}")
    assert code == 0, capsys.readouterr().err
    manifest = _manifest(out)
    assert (manifest["output_kind"], manifest["metric"]) == ("regression", "mean_absolute_error")
    assert "2/2" in capsys.readouterr().out  # the progress bar over the widths


def test_bench_times_only_the_rates_asked_for(files, tmp_path, capsys):
    out = tmp_path / "bundle"
    _invoke("export", str(files / "tiny.keras"), str(out), "--rates=1,0.5,0.25")
    capsys.readouterr()
    assert _invoke("bench", str(out), "--repeats=1", "--rates=0.5") == 0
    rows = capsys.readouterr().out.splitlines()
    assert [row.split()[0] for row in rows[2:]] == ["0.5"]
    assert _invoke("bench", str(out), "--repeats=1", "--rates=0.3") == 1
    assert "--rates must name rates of the bundle: 1, 0.5, 0.25" in capsys.readouterr().err


def test_a_flag_the_command_does_not_read_is_refused():
    with pytest.raises(app.UsageError, match="--num_threads applies to bench"):
        _invoke("info", "bundle", "--num_threads=4")


@pytest.mark.parametrize(
    "manifest", ["[" * 100_000, '{"format": ' + "9" * 5000 + "}", ""],
    ids=["deeply nested", "huge number", "empty"],
)
def test_a_broken_bundle_is_one_line_not_a_traceback(tmp_path, capsys, manifest):
    (tmp_path / "manifest.json").write_text(manifest)
    assert _invoke("info", str(tmp_path)) == 1
    err = capsys.readouterr().err
    assert err.startswith("keras-slicing info: error: ") and err.count("\n") == 1


def test_info_and_export_are_quiet_and_info_imports_no_tensorflow(files, tmp_path):
    out = tmp_path / "bundle"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    export = subprocess.run(
        [sys.executable, "-m", "keras_slicing_cli", "export",
         str(files / "tiny.keras"), str(out), "--rates=1"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
    )
    assert export.returncode == 0, export.stderr
    assert export.stderr == ""  # no TensorFlow, absl or oneDNN log lines
    script = (
        "import sys; from absl import flags; import keras_slicing_cli as cli; "
        "code = cli.main(flags.FLAGS(['keras-slicing', 'info', sys.argv[1]])); "
        "print(code, 'tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    info = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=120)
    assert info.stdout.splitlines()[-1] == "0 False False", info.stderr


def test_single_file_export_is_benched_per_signature(files, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert _invoke(
        "export", str(files / "tiny.keras"), str(out), "--rates=1,0.5", "--single_file"
    ) == 0
    assert sorted(os.listdir(out)) == ["manifest.json", "model.tflite"]
    assert [e["signature"] for e in _manifest(out)["rates"]] == ["rate_1", "rate_0.5"]
    capsys.readouterr()
    assert _invoke("bench", str(out), "--repeats=2") == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [row[0] for row in rows if row and row[0] in ("1", "0.5")] == ["1", "0.5"]
