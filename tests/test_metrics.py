"""roilib.metrics agrees with scikit-learn's reference implementations."""
import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, top_k_accuracy_score

from roilib.metrics import summarize

# balanced_accuracy_score warns where a prediction names a class absent from the labels:
# that is the case tested on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")


@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    classes = 7
    labels = rng.integers(0, classes - 2, 300)          # the last two classes are absent
    labels[rng.random(300) < 0.3] = 1                   # imbalanced
    scores = rng.random((300, classes)) + 2.0 * np.eye(classes)[labels] * rng.random((300, 1))
    topk = np.argsort(-scores, axis=1)[:, :5]
    preds = topk[:, 0]
    areas = rng.integers(1, 20000, 300)
    result = summarize(labels, preds, areas, [f"c{i}" for i in range(classes)], topk)

    assert result["accuracy"] == pytest.approx(np.mean(labels == preds))
    # balanced accuracy = mean recall over the classes present in the labels
    assert result["mean_class_accuracy"] == pytest.approx(balanced_accuracy_score(labels, preds))
    assert np.array_equal(result["confusion"], confusion_matrix(labels, preds, labels=range(classes)))
    assert result["top5_accuracy"] == pytest.approx(
        top_k_accuracy_score(labels, scores, k=5, labels=range(classes)))
    assert [row["accuracy"] for row in result["per_class"]][-2:] == [None, None]
    for row in result["by_size"]:
        inside = (areas >= row["min_area"]) & (areas < (row["max_area"] or np.inf))
        assert row["count"] == inside.sum()
        if inside.sum():
            assert row["mean_class_accuracy"] == pytest.approx(
                balanced_accuracy_score(labels[inside], preds[inside]))
