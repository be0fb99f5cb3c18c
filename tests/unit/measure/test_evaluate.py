"""Classification metrics (shrinkflow.measure.evaluate) on hand-made logits and against
scikit-learn."""

import math

import pytest
import torch

from shrinkflow.measure.evaluate import classification_metrics, expected_calibration_error


def test_metrics_on_a_hand_made_example():
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 5.0, 0], [0, 0, 5.0]])
    labels = torch.tensor([0, 1, 2, 2])
    m = classification_metrics(logits, labels, num_classes=3, ece_bins=10)
    assert m["acc"] == pytest.approx(0.75)
    assert m["per_class_acc"] == [1.0, 1.0, 0.5]
    assert m["confusion"].tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    # F1 per class: 1, 2/3, 2/3
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    # softmax of (5, 0, 0): p(top) = e^5 / (e^5 + 2); three rows right, one wrong with p = 1/(..)
    top = math.exp(5) / (math.exp(5) + 2)
    assert m["loss"] == pytest.approx((3 * -math.log(top) + math.log(math.exp(5) + 2)) / 4)
    # every confidence is `top`, in the last of 10 bins, where 3 of 4 are right
    assert m["ece"] == pytest.approx(top - 0.75, abs=1e-6)
    assert m["support"] == [1, 1, 2]


def test_ece_is_zero_when_confidence_matches_accuracy_and_large_when_overconfident():
    labels = torch.tensor([0, 1])
    perfect = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(perfect, labels, 10) == pytest.approx(0.0)
    wrong = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert expected_calibration_error(wrong, labels, 10) == pytest.approx(1.0)


def test_metrics_agree_with_scikit_learn_on_random_predictions():
    # imported here, not at the top: sklearn.metrics costs 1.75 s (measured, after torch), paid
    # only when this one test runs
    from sklearn.metrics import confusion_matrix, f1_score

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 5, generator=gen)
    labels = torch.randint(0, 5, (200,), generator=gen)
    m = classification_metrics(logits, labels, num_classes=5)
    predicted = logits.argmax(1).numpy()
    assert m["confusion"].tolist() == confusion_matrix(labels.numpy(), predicted).tolist()
    assert m["macro_f1"] == pytest.approx(f1_score(labels.numpy(), predicted, average="macro"))
