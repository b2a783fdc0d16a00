"""SlicingModel under tf.distribute, in subprocesses.

Logical devices must be configured before TensorFlow initializes its
runtime and a multi-worker strategy owns its process, so each scenario runs
this file as a script in a fresh interpreter.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 150

# Every scenario runs in subprocesses, one per worker.
pytestmark = pytest.mark.slow


def _run_role(*args, env_extra=None):
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "KERAS_BACKEND": "tensorflow",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        **(env_extra or {}),
    }
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process):
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        raise AssertionError(f"worker timed out after {TIMEOUT_S} s:\n{output[-3000:]}")
    assert process.returncode == 0, output[-3000:]
    return output


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def test_mirrored_two_replicas_train_like_one_device(tmp_path):
    _finish(_run_role("mirrored", str(tmp_path)))
    one = np.load(tmp_path / "one_device.npz")
    two = np.load(tmp_path / "mirrored.npz")
    assert len(one.files) == len(two.files) > 0
    moved = False
    for key in one.files:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-4, atol=1e-5)
        moved |= not np.allclose(one[key], np.load(tmp_path / "initial.npz")[key])
    assert moved
    replicas = json.loads((tmp_path / "replica_rates.json").read_text())
    assert all(a == b for a, b in replicas)
    assert len({tuple(a) for a, _ in replicas}) > 1  # the draws do vary


def test_multi_worker_mirrored_workers_end_with_identical_weights(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    workers = []
    for index in range(2):
        config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        workers.append(
            _run_role(
                "multi_worker",
                str(tmp_path / f"worker{index}.npz"),
                env_extra={"TF_CONFIG": json.dumps(config)},
            )
        )
    try:
        for worker in workers:
            _finish(worker)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    first = np.load(tmp_path / "worker0.npz")
    second = np.load(tmp_path / "worker1.npz")
    initial = np.load(tmp_path / "worker0.npz.initial.npz")
    assert first.files == second.files
    for key in first.files:
        np.testing.assert_array_equal(first[key], second[key])
    assert any(not np.allclose(first[k], initial[k]) for k in first.files)


# ---------------------------------------------------------------- workers


def _digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images[:256] / 16.0).astype("float32")[..., None]
    return x, digits.target[:256]


def _model(seed=3):
    import keras

    from keras_slicing import layers
    from keras_slicing import rate_input
    from keras_slicing.model import SlicingModel

    x = keras.Input((8, 8, 1))
    rate = rate_input()
    h = layers.SlicedConv2D(16, 3, padding="same", slice_input=False)(x, rate)
    h = layers.SlicedGroupNormalization(groups=8)(h, rate)
    h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    y = layers.SlicedDense(10, slice_output=False)(h, rate)
    model = SlicingModel([x, rate], y, scheduler="random_min_max", seed=seed)
    model.compile(
        keras.optimizers.SGD(0.5),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _save(model, path):
    np.savez(path, *[np.asarray(v) for v in model.trainable_weights])


def _mirrored(out):
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    import keras

    out = Path(out)
    x, y = _digits()
    keras.utils.set_random_seed(0)
    reference = _model()
    initial = reference.get_weights()
    _save(reference, out / "initial.npz")
    reference.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    _save(reference, out / "one_device.npz")

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = _model()
        model.set_weights(initial)
        model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    _save(model, out / "mirrored.npz")

    @tf.function
    def draw():
        return strategy.run(model._sample_indices)

    draws = []
    for _ in range(8):
        a, b = strategy.experimental_local_results(draw())
        draws.append([a.numpy().tolist(), b.numpy().tolist()])
    (out / "replica_rates.json").write_text(json.dumps(draws))


def _multi_worker(out):
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    import keras

    x, y = _digits()
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = _model()
    _save(model, out + ".initial.npz")
    model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    _save(model, out)


if __name__ == "__main__":
    started = time.time()
    role, target = sys.argv[1], sys.argv[2]
    {"mirrored": _mirrored, "multi_worker": _multi_worker}[role](target)
    print(f"{role} done in {time.time() - started:.1f} s")
