import pickle

import numpy as np
import pytest

from tests.examples.loader import load_example


def _load_example():
    return load_example("cifar10_resnet")


def _write_batches(directory, per_batch=4):
    """A tiny directory in the format of the CIFAR-10 python batches."""
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, size=(per_batch, 3, 32, 32), dtype=np.uint8)
        images[0, 0] = 255  # first image: red plane saturated
        images[0, 1:] = 0
        batch = {b"data": images.reshape(per_batch, 3072), b"labels": list(range(per_batch))}
        with open(directory / name, "wb") as f:
            pickle.dump(batch, f)


def test_batches_are_decoded_to_channels_last_images(tmp_path):
    _write_batches(tmp_path)
    x_train, y_train, x_test, y_test = _load_example().load_cifar10(tmp_path)
    assert x_train.shape == (20, 32, 32, 3) and x_test.shape == (4, 32, 32, 3)
    assert (x_train[0, ..., 0] == 255).all() and (x_train[0, ..., 1:] == 0).all()
    assert y_train.tolist() == [0, 1, 2, 3] * 5


def test_missing_batches_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        _load_example().load_cifar10(tmp_path)


def test_one_training_step_runs_and_reports_every_rate(tmp_path):
    _write_batches(tmp_path)
    example = _load_example()
    accuracy = example.train(
        tmp_path, depth=8, base_width=8, epochs=1, batch_size=4,
        steps_per_epoch=1, output_dir=tmp_path / "out", verbose=0,
    )
    assert sorted(accuracy) == [0.25, 0.5, 0.75, 1.0]
    assert all(0.0 <= value <= 1.0 for value in accuracy.values())
    assert (tmp_path / "out" / "preact_resnet8.keras").is_file()


def test_depth_must_be_six_n_plus_two():
    with pytest.raises(ValueError, match="depth=10"):
        _load_example().preact_resnet(depth=10)
