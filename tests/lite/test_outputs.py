"""Output kinds: predictions, confidence and metric against numpy by hand."""

import numpy as np
import pytest

from keras_slicing_lite import outputs


def test_binary_probability_thresholds_at_one_half():
    p = np.array([[0.9999], [0.2], [0.5]], np.float32)
    np.testing.assert_array_equal(outputs.predictions("binary_probability", p), [1, 0, 1])
    np.testing.assert_allclose(outputs.confidence("binary_probability", p), [0.9999, 0.8, 0.5])


def test_binary_logit_goes_through_the_sigmoid():
    z = np.array([[3.0], [-1.0], [-800.0]], np.float32)
    np.testing.assert_array_equal(outputs.predictions("binary_logit", z), [1, 0, 0])
    expected = 1 / (1 + np.exp(-np.array([3.0, -1.0])))
    np.testing.assert_allclose(
        outputs.confidence("binary_logit", z), [expected[0], 1 - expected[1], 1.0], rtol=1e-5
    )


def test_multiclass_logits_softmax_and_argmax():
    z = np.array([[1.0, 3.0, 0.0]], np.float32)
    e = np.exp(z - z.max())
    np.testing.assert_allclose(outputs.confidence("multiclass_logits", z), [e.max() / e.sum()], rtol=1e-6)
    assert outputs.predictions("multiclass_logits", z).tolist() == [1]


def test_multilabel_confidence_is_the_least_sure_label():
    p = np.array([[0.9, 0.3, 0.99]], np.float32)
    np.testing.assert_allclose(outputs.confidence("multilabel_probabilities", p), [0.7])
    assert outputs.predictions("multilabel_probabilities", p).tolist() == [[1, 0, 1]]


def test_multilabel_binary_accuracy_averages_over_labels():
    p = np.array([[0.9, 0.3], [0.2, 0.8]], np.float32)
    y = outputs.targets("multilabel_probabilities", [[1, 1], [0, 1]], (None, 2), "t")
    assert outputs.score("multilabel_probabilities", p, y) == pytest.approx(0.75)


def test_regression_scores_mean_absolute_error_and_has_no_confidence():
    out = np.array([[1.0], [2.0]], np.float32)
    y = outputs.targets("regression", [1.5, 4.0], (None, 1), "t")
    assert outputs.score("regression", out, y) == pytest.approx(1.25)
    assert outputs.metric_name("regression") == "mean_absolute_error"
    with pytest.raises(ValueError, match="classifier"):
        outputs.confidence("regression", out)


def test_one_hot_and_column_labels_become_class_indices():
    one_hot = outputs.targets("multiclass_logits", np.eye(3)[[2, 0]], (None, 3), "t")
    column = outputs.targets("multiclass_logits", [[2], [0]], (None, 3), "t")
    assert one_hot.tolist() == column.tolist() == [2, 0]


@pytest.mark.parametrize(
    "kind, y, match",
    [
        ("binary_probability", [0, 2], "0/1 labels"),
        ("multiclass_logits", [0.5, 1.0], "non-integer"),
        ("multiclass_logits", [0, 7], r"\[0, 2\]"),
        ("regression", [[1.0, 2.0]], "output shape"),
    ],
)
def test_labels_that_do_not_fit_the_kind_are_rejected(kind, y, match):
    with pytest.raises(ValueError, match=match):
        outputs.targets(kind, y, (None, 3 if kind != "binary_probability" else 1)
                        if kind != "regression" else (None, 1), "t")
