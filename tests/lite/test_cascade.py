import warnings

import numpy as np
import pytest

from keras_slicing_lite import load_bundle
from keras_slicing_lite.cascade import CascadeCostWarning
from tests.lite.conftest import RATES


def _softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _reference_cascade(expected, rates, threshold):
    """The cascade computed from the Keras outputs, rate by rate."""
    order = sorted(rates)
    n = len(expected[order[0]])
    answered = np.full(n, np.nan)
    outputs = np.zeros_like(expected[order[0]])
    for rate in order:
        open_ = np.isnan(answered)
        confident = _softmax(expected[rate]).max(-1) >= threshold
        take = open_ & (confident | (rate == order[-1]))
        answered[take] = rate
        outputs[take] = expected[rate][take]
    return outputs, answered


def test_threshold_zero_answers_everything_at_narrowest(bundle_dir, reference):
    x, expected = reference
    with warnings.catch_warnings():
        warnings.simplefilter("error", CascadeCostWarning)  # cheaper than rate 1
        result = load_bundle(bundle_dir).predict_cascade(x, threshold=0.0)
    assert np.all(result.rates == 0.25)
    np.testing.assert_allclose(result.outputs, expected[0.25], atol=1e-5)


def test_cascade_over_the_widest_rate_alone_answers_everything_there(
    bundle_dir, reference
):
    x, expected = reference
    bundle = load_bundle(bundle_dir)
    result = bundle.predict_cascade(x, threshold=1.0, rates=[1.0])
    assert np.all(result.rates == 1.0)
    np.testing.assert_allclose(result.outputs, expected[1.0], atol=1e-5)
    assert result.mean_macs == pytest.approx(bundle.rate_entry(1.0)["macs"])


def test_threshold_one_escalates_everything_not_certain(bundle_dir, reference):
    x, expected = reference
    bundle = load_bundle(bundle_dir)
    with pytest.warns(CascadeCostWarning, match="threshold=1.0"):
        result = bundle.predict_cascade(x, threshold=1.0)
    assert result.macs_fraction > 1.0
    outputs, answered = _reference_cascade(expected, RATES, 1.0)
    np.testing.assert_array_equal(result.rates, answered)
    assert np.mean(result.rates == 1.0) > 0.9


@pytest.mark.parametrize("threshold", [0.6, 0.9])
def test_cascade_matches_reference(bundle_dir, reference, threshold):
    x, expected = reference
    result = load_bundle(bundle_dir).predict_cascade(x, threshold=threshold)
    outputs, answered = _reference_cascade(expected, RATES, threshold)
    np.testing.assert_array_equal(result.rates, answered)
    np.testing.assert_allclose(result.outputs, outputs, atol=1e-5)
    np.testing.assert_array_equal(result.predictions, outputs.argmax(-1))


def test_mean_macs_counts_every_width_an_example_ran(bundle_dir, reference):
    x, expected = reference
    bundle = load_bundle(bundle_dir)
    result = bundle.predict_cascade(x, threshold=0.9)
    _, answered = _reference_cascade(expected, RATES, 0.9)
    macs = {r: bundle.rate_entry(r)["macs"] for r in RATES}
    per_example = [sum(macs[r] for r in RATES if r <= a) for a in answered]
    assert result.mean_macs == pytest.approx(np.mean(per_example))
    assert result.macs_fraction == pytest.approx(np.mean(per_example) / macs[1.0])


def test_cascade_over_chosen_rates(bundle_dir, reference):
    x, expected = reference
    result = load_bundle(bundle_dir).predict_cascade(x, threshold=0.9, rates=[1.0, 0.25])
    _, answered = _reference_cascade(expected, (1.0, 0.25), 0.9)
    np.testing.assert_array_equal(result.rates, answered)


def test_probability_outputs_are_not_softmaxed_again(bundle_dir, reference, monkeypatch):
    x, expected = reference
    bundle = load_bundle(bundle_dir)
    # A bundle read from a v1 manifest: multiclass, logits or probabilities
    # told apart per call.
    monkeypatch.setattr(type(bundle), "output_kind", "multiclass")
    real_predict = bundle.predict
    monkeypatch.setattr(
        bundle, "predict", lambda batch, rate: _softmax(real_predict(batch, rate))
    )
    result = bundle.predict_cascade(x, threshold=0.9)
    _, answered = _reference_cascade(expected, RATES, 0.9)
    np.testing.assert_array_equal(result.rates, answered)


def test_accuracy_compares_with_labels(bundle_dir, reference, digits):
    x, _ = reference
    result = load_bundle(bundle_dir).predict_cascade(x, threshold=0.9)
    labels = digits[3][: len(x)]
    assert result.accuracy(labels) == np.mean(result.predictions == labels)


@pytest.mark.parametrize("threshold", [-0.1, "high", None, 1.5, float("nan")])
def test_bad_threshold_is_rejected_naming_the_range(bundle_dir, reference, threshold):
    with pytest.raises(ValueError, match=r"threshold must be a number in \[0, 1\]"):
        load_bundle(bundle_dir).predict_cascade(reference[0], threshold=threshold)


def test_unknown_cascade_rate_is_named(bundle_dir, reference):
    with pytest.raises(ValueError, match=r"rate=0\.6 is not in this bundle"):
        load_bundle(bundle_dir).predict_cascade(reference[0], rates=[1.0, 0.6])
