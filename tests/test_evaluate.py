import pytest
import torch

from shrinkflow.artifacts import save_model
from shrinkflow.errors import ShrinkflowError
from shrinkflow.evaluate import classification_metrics, expected_calibration_error, load_predictor
from shrinkflow.models import build_model, make_spec
from shrinkflow.params import ModelSpec


def test_metrics_on_a_hand_made_example():
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 5.0, 0], [0, 0, 5.0]])
    labels = torch.tensor([0, 1, 2, 2])
    m = classification_metrics(logits, labels, num_classes=3, ece_bins=10)
    assert m["acc"] == pytest.approx(0.75)
    assert m["per_class_acc"] == [1.0, 1.0, 0.5]
    assert m["confusion"].tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    # F1 per class: 1, 2/3, 2/3
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_ece_is_zero_when_confidence_matches_accuracy_and_large_when_overconfident():
    labels = torch.tensor([0, 1])
    perfect = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(perfect, labels, 10) == pytest.approx(0.0)
    wrong = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert expected_calibration_error(wrong, labels, 10) == pytest.approx(1.0)


def test_predictor_for_a_pt_model(tmp_path, tiny_data):
    spec = make_spec(ModelSpec(widths=[4]), 1, 4, [0.3], [0.3])
    model = build_model(spec).eval()
    save_model(tmp_path / "m.pt", model, spec)
    pred = load_predictor(tmp_path / "m.pt", (1, 8, 8), batch_size=10)
    x = tiny_data.test[0]
    with torch.no_grad():
        expected = model(x.float() / 255)
    assert torch.allclose(pred.predict(x), expected, atol=1e-6)
    assert pred.params == sum(p.numel() for p in model.parameters()) and pred.macs > 0


def test_missing_model_is_clear(tmp_path):
    with pytest.raises(ShrinkflowError, match="model file not found"):
        load_predictor(tmp_path / "nope.pt", (1, 8, 8))


def test_metrics_agree_with_scikit_learn_on_random_predictions():
    from sklearn.metrics import confusion_matrix, f1_score

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 5, generator=gen)
    labels = torch.randint(0, 5, (200,), generator=gen)
    m = classification_metrics(logits, labels, num_classes=5)
    predicted = logits.argmax(1).numpy()
    assert m["confusion"].tolist() == confusion_matrix(labels.numpy(), predicted).tolist()
    assert m["macro_f1"] == pytest.approx(f1_score(labels.numpy(), predicted, average="macro"))
