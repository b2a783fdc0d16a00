"""slice_model on keras.applications networks (weights=None, 32x32, 10 classes).

They are large for this suite, so each is built and converted once per
module, and only MobileNetV3Small (the smallest) is cut at every width and
exported to TFLite (benchmarks/applications_latency.py cuts and exports
DenseNet121, whose joins are joined again, and compares the file with Keras).
"""

import functools

import keras
import numpy as np
import pytest

import keras_slicing
from tests.conversion.plain_models import application_with_batch_statistics

APPLICATIONS = ("MobileNetV2", "MobileNetV3Small", "ResNet50", "EfficientNetB0", "DenseNet121")
SHAPE = (32, 32, 3)


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _images(n=2, seed=0):
    return (np.random.default_rng(seed).random((n, *SHAPE)) * 255).astype("float32")


@pytest.fixture(autouse=True, scope="module")
def _release_the_networks():
    yield
    _plain.cache_clear()
    _converted.cache_clear()
    _calibrated.cache_clear()


@functools.cache
def _plain(name):
    keras.utils.set_random_seed(0)
    return application_with_batch_statistics(name, SHAPE, _images(32, seed=1))


@functools.cache
def _converted(name):
    return keras_slicing.slice_model(_plain(name))


@functools.cache
def _calibrated(name):
    """Converted with data: every narrow width's batch-norm rows computed,
    which extraction and export require."""
    return keras_slicing.slice_model(_plain(name), data=_images(16, seed=2))


@pytest.mark.parametrize("name", APPLICATIONS)
def test_application_matches_the_original_at_full_width(name):
    """Rewired channels sum in another order: float32 rounding, amplified by depth.

    benchmarks/slice_applications.py measures it (up to 1e-4 of the largest
    logit, ResNet50) and shows the float64 conversion equal to 1e-10.
    """
    x = _images()
    want = _numpy(_plain(name)(x))
    assert np.abs(want).max() > 0.1  # a live network, not a vanishing one
    have = _numpy(_converted(name)(x))
    np.testing.assert_allclose(have, want, atol=2e-4 * np.abs(want).max())


def test_application_without_rewiring_matches_to_float32_precision():
    plain = _plain("MobileNetV2")
    x = _images()
    sliced = keras_slicing.slice_model(plain, rewire=None)
    np.testing.assert_allclose(_numpy(sliced(x)), _numpy(plain(x)), atol=1e-5)


@pytest.mark.parametrize("name", APPLICATIONS)
def test_application_passes_check_and_narrows_its_cost(name):
    sliced = _converted(name)
    keras_slicing.check_model(sliced)
    plan = sliced.slicing_plan
    macs = [plan.costs[rate]["macs"] for rate in sliced.rates]
    assert macs == sorted(macs, reverse=True)
    assert macs[-1] < macs[0] / 8  # quadratic in the rate for most layers
    assert len(plan.sliced_layers) > 0.9 * len(plan.rows)


def test_mobilenet_v3_small_extracts_every_width():
    sliced, x = _calibrated("MobileNetV3Small"), _images()
    for rate in sliced.rates:
        plain = keras_slicing.extract_submodel(sliced, rate)
        np.testing.assert_allclose(
            _numpy(plain(x)), _numpy(sliced.at_rate(rate)(x)), atol=1e-5, rtol=1e-5
        )


def test_mobilenet_v3_small_exports_every_width(tmp_path):
    sliced, x = _calibrated("MobileNetV3Small"), _images()
    manifest = keras_slicing.export_tflite(
        sliced, tmp_path / "bundle", output_kind="multiclass_logits"
    )
    from keras_slicing.interpreter import load_interpreter
    from keras_slicing.interpreter import run_tflite

    assert [entry["rate"] for entry in manifest["rates"]] == list(sliced.rates)
    for entry in manifest["rates"]:
        interpreter = load_interpreter(str(tmp_path / "bundle" / entry["file"]))
        np.testing.assert_allclose(
            run_tflite(interpreter, x), _numpy(sliced.at_rate(entry["rate"])(x)),
            atol=1e-4, rtol=1e-4,
        )


def test_densenet_slices_every_join():
    plan = _converted("DenseNet121").slicing_plan
    joins = [row for row in plan.rows if row.original == "Concatenate"]
    assert len(joins) == 58
    assert {(row.becomes, row.status) for row in joins} == {("SlicedConcatenate", "sliced")}
