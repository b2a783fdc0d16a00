"""keras-slicing on JAX and PyTorch, checked there and against TensorFlow.

Each backend runs `tests/backends/checks.py` once, in a fresh interpreter
with `KERAS_BACKEND` set (a process has one Keras backend); every check is
reported as its own test. Files crossing backends are compared here, on
TensorFlow: a `.keras` model saved there loads here with identical weights
and outputs, one saved here loads there, and `model_cost` agrees.
"""

import json
import re
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_slicing
from keras_slicing.tflite_flatbuffer import tflite_op_names
from tests.backends import checks
from tests.backends import training_checks
from tests.sliced_models import randomize_weights
from tests.sliced_models import small_cnn

ROOT = pathlib.Path(__file__).resolve().parents[2]
BACKENDS = ("jax", "torch")
# A check of one backend's own feature is run on that backend only: it is
# neither run nor reported elsewhere (not a skip standing in for a pass).
CHECK_CASES = [
    (backend, fn.__name__)
    for backend in BACKENDS
    for fn in checks.CHECKS
    if checks.BACKEND_ONLY.get(fn.__name__, backend) == backend
]

# Each backend runs every check in a subprocess of its own.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tf_dir(tmp_path_factory):
    """A model saved on TensorFlow, with its weights and outputs."""
    keras.utils.set_random_seed(0)
    out = tmp_path_factory.mktemp("tensorflow")
    model = small_cnn()
    randomize_weights(model, seed=3)
    model.save(out / "model.keras")
    np.savez(out / "weights.npz", **{f"w{i}": w for i, w in enumerate(model.get_weights())})
    x = np.random.default_rng(7).normal(size=(4, 8, 8, 1)).astype("float32")
    outputs = {"x": x}
    for rate in checks.RATES:
        outputs[str(rate)] = model.predict([x, np.full(4, rate, "float32")], verbose=0)
    np.savez(out / "outputs.npz", **outputs)
    # The training reference: a SlicingModel saved untrained, then trained
    # here; each backend trains the saved file the same way.
    trained = training_checks.distillation_model()
    randomize_weights(trained, seed=5)
    trained.save(out / "train_init.keras")
    losses, weights = training_checks.reference_training(trained)
    np.savez(
        out / "trained.npz", losses=losses,
        **{f"w{i}": w for i, w in enumerate(weights)},
    )
    return out


@pytest.fixture(scope="module")
def launched(tf_dir, tmp_path_factory):
    """Starts the checks of every backend at once: JAX spends most of its
    time compiling on one core, so the two overlap on a 2-core machine."""
    processes = {}
    for backend in BACKENDS:
        out = tmp_path_factory.mktemp(backend)
        env = dict(os.environ, KERAS_BACKEND=backend)
        # Two host devices for keras.distribution.DataParallel on JAX.
        env["XLA_FLAGS"] = " ".join(
            [env.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=2"]
        ).strip()
        env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p]
        )
        with open(out / "stderr.txt", "w") as stderr:  # a pipe could fill
            process = subprocess.Popen(
                [sys.executable, "-m", "tests.backends.checks", str(out), str(tf_dir)],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
            )
        processes[backend] = (out, process)
    yield processes
    for _, process in processes.values():
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="module", params=BACKENDS)
def run(request, launched):
    """The checks' results under one backend: `(out_dir, results)`."""
    backend = request.param
    out, process = launched[backend]
    try:
        process.wait(timeout=900)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if process.returncode or not (out / "results.json").exists():
        stderr = (out / "stderr.txt").read_text()
        pytest.fail(
            f"the checks did not run under KERAS_BACKEND={backend} (is "
            f"keras-slicing[{backend}] installed?):\n{stderr[-3000:]}"
        )
    return out, json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("run, name", CHECK_CASES, indirect=["run"])
def test_check_passes(run, name):
    _, results = run
    assert results[name] == "ok", results[name]


def test_model_cost_equals_tensorflow(run):
    out, _ = run
    costs = json.loads((out / "cost.json").read_text())
    model = small_cnn()
    for rate in checks.RATES:
        assert costs[str(rate)] == keras_slicing.model_cost(model, rate)


def test_file_saved_there_loads_on_tensorflow_with_its_outputs(run):
    out, _ = run
    loaded = keras.saving.load_model(out / "model.keras")
    weights = np.load(out / "weights.npz")
    for i, weight in enumerate(loaded.get_weights()):
        np.testing.assert_array_equal(weight, weights[f"w{i}"])
    saved = np.load(out / "outputs.npz")
    x = saved["x"]
    for rate in checks.RATES:
        got = loaded.predict([x, np.full(len(x), rate, "float32")], verbose=0)
        np.testing.assert_allclose(got, saved[str(rate)], rtol=1e-5, atol=1e-5)


def test_export_there_writes_the_operators_and_sizes_of_tensorflow(run, tf_dir, tmp_path):
    out, results = run
    assert results["export_tflite_writes_a_bundle"] == "ok"
    model = keras.saving.load_model(tf_dir / "model.keras")
    reference = keras_slicing.export_tflite(model, tmp_path / "bundle", rates=[1.0, 0.5])
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    for theirs, ours in zip(manifest["rates"], reference["rates"]):
        assert (theirs["rate"], theirs["bytes"]) == (ours["rate"], ours["bytes"])
        assert tflite_op_names((out / "bundle" / theirs["file"]).read_bytes()) == (
            tflite_op_names((tmp_path / "bundle" / ours["file"]).read_bytes())
        )


def _docs_jax_script():
    page = (ROOT / "docs" / "backends.md").read_text()
    scripts = [
        code for code in re.findall(r"```py\n(.*?)```", page, flags=re.S)
        if code.startswith("# KERAS_BACKEND=jax")
    ]
    assert len(scripts) == 1, "the JAX training script of docs/backends.md is missing"
    return scripts[0]


def test_docs_jax_script_trains_and_its_file_exports_with_tensorflow(tmp_path):
    # The page's script, then (not on the page) the outputs JAX gives.
    script = _docs_jax_script() + (
        "\nnp.savez('jax_outputs.npz', x=features[:8], **{str(r): "
        "model.at_rate(r).predict(features[:8], verbose=0) for r in (1.0, 0.5, 0.25)})\n"
    )
    (tmp_path / "train_jax.py").write_text(script)
    env = dict(os.environ, KERAS_BACKEND="jax")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    done = subprocess.run(
        [sys.executable, "train_jax.py"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # The default scheduler runs every rate: one set, one compiled step.
    assert "[(1.0, 0.75, 0.5, 0.25)]" in done.stdout, done.stdout
    keras_cli = pathlib.Path(sys.executable).with_name("keras-slicing")
    exported = subprocess.run(
        [str(keras_cli), "export", "model.keras", "bundle", "--rates=1,0.5,0.25"],
        cwd=tmp_path, env=dict(os.environ, KERAS_BACKEND="tensorflow"),
        capture_output=True, text=True, timeout=600,
    )
    assert exported.returncode == 0, exported.stderr[-3000:]
    from keras_slicing_lite import load_bundle

    bundle = load_bundle(tmp_path / "bundle")
    want = np.load(tmp_path / "jax_outputs.npz")
    for rate in (1.0, 0.5, 0.25):
        got = bundle.predict(want["x"], rate=rate)
        np.testing.assert_allclose(got, want[str(rate)], rtol=1e-5, atol=1e-5)
