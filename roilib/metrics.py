"""Accuracy overall, per class and per segment size (the paper's bins and COCO's), and its
figures (PNG): accuracy per segment size (one or several models) and the confusion matrix."""
import math

import numpy as np

from roilib.outputs import save_figure

# The paper's bins: segment area in pixels of the original image, doubling from 1k.
SIZE_BINS = [(0, 1000, "<1k"), (1000, 2000, "1k-2k"), (2000, 4000, "2k-4k"), (4000, 8000, "4k-8k"),
             (8000, 16000, "8k-16k"), (16000, 32000, "16k-32k"), (32000, 64000, "32k-64k"),
             (64000, 128000, "64k-128k"), (128000, 256000, "128k-256k"), (256000, 500000, "256k-500k"),
             (500000, 1000000, "500k-1M"), (1000000, math.inf, ">=1M")]
# Classes up to which eval.json holds the whole confusion matrix (8 MB as int64); beyond, only
# its nonzero cells (a 20000-class matrix would be 3.2 GB, its JSON larger).
DENSE_CONFUSION = 1000
COCO_BINS = [(0, 32 ** 2, "small"), (32 ** 2, 96 ** 2, "medium"), (96 ** 2, math.inf, "large")]


def _nan_to_none(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def class_accuracies(labels, preds, num_classes):
    """(accuracy per class or nan where a class has no segment, count per class)."""
    counts = np.bincount(labels, minlength=num_classes)
    hits = np.bincount(labels[preds == labels], minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, hits / np.maximum(counts, 1), np.nan), counts


def group_summary(labels, preds, num_classes):
    if len(labels) == 0:
        return {"count": 0, "accuracy": None, "mean_class_accuracy": None}
    per_class, _ = class_accuracies(labels, preds, num_classes)
    return {"count": int(len(labels)), "accuracy": float(np.mean(labels == preds)),
            "mean_class_accuracy": float(np.nanmean(per_class))}


def summarize(labels, preds, areas, class_names, topk=None):
    """Metrics for a set of segments. `topk` [N,k] predicted indices adds top-k accuracy.
    Mean class accuracy averages over the classes present (the paper's main figure)."""
    labels, preds, areas = (np.asarray(a, dtype=np.int64) for a in (labels, preds, areas))
    num_classes = len(class_names)
    overall = group_summary(labels, preds, num_classes)
    per_class, counts = class_accuracies(labels, preds, num_classes)
    cells, cell_counts = np.unique(labels * num_classes + preds, return_counts=True)
    result = dict(overall)
    if topk is not None and len(labels):
        topk = np.asarray(topk)
        result[f"top{topk.shape[1]}_accuracy"] = float(np.mean((topk == labels[:, None]).any(1)))
    result["per_class"] = [{"class": name, "count": int(c), "accuracy": _nan_to_none(float(a))}
                           for name, c, a in zip(class_names, counts, per_class)]
    result["by_size"] = by_bins(labels, preds, areas, num_classes, SIZE_BINS)
    result["coco_size"] = by_bins(labels, preds, areas, num_classes, COCO_BINS)
    if num_classes <= DENSE_CONFUSION:
        confusion = np.zeros(num_classes * num_classes, dtype=np.int64)
        confusion[cells] = cell_counts
        result["confusion"] = confusion.reshape(num_classes, num_classes).tolist()
    else:   # [[true, predicted, count], ...] of the nonzero cells
        result["confusion"] = None
        result["confusion_cells"] = np.stack([cells // num_classes, cells % num_classes, cell_counts], 1).tolist()
    return result


def by_bins(labels, preds, areas, num_classes, bins):
    """One group_summary per (low, high, name) area bin: low <= area < high."""
    rows = []
    for lo, hi, name in bins:
        inside = (areas >= lo) & (areas < hi)
        rows.append({"bin": name, "min_area": lo, "max_area": None if math.isinf(hi) else hi,
                     **group_summary(labels[inside], preds[inside], num_classes)})
    return rows


def pyplot():
    import matplotlib
    matplotlib.use("Agg")           # files only: no display needed
    import matplotlib.pyplot as plt
    return plt


def plot_accuracy_by_size(series, path, metric="mean_class_accuracy", title=None):
    """`series`: {name: by_size rows (roilib.metrics)}; bins without segments are left out.
    Grouped bars, with the segment count of each bin under its label."""
    plt = pyplot()
    first = next(iter(series.values()))
    keep = [i for i, row in enumerate(first) if row["count"]]
    labels = [f"{first[i]['bin']}\n(n={first[i]['count']})" for i in keep]
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.0 * len(keep) + 0.4 * len(series) * len(keep)), 4.5))
    for j, (name, rows) in enumerate(series.items()):
        values = [rows[i][metric] or 0.0 for i in keep]
        ax.bar(np.arange(len(keep)) + (j - (len(series) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(np.arange(len(keep)), labels, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_xlabel("segment area (pixels of the original image)")
    ax.set_title(title or f"{metric.replace('_', ' ')} by segment size")
    ax.grid(axis="y", alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def plot_confusion(confusion, class_names, path):
    """Row-normalised confusion matrix (true class per row)."""
    plt = pyplot()
    matrix = np.asarray(confusion, dtype=float)
    rows = matrix.sum(1, keepdims=True)
    matrix = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    n = len(class_names)
    size = min(4 + 0.35 * n, 24)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(n)
    ax.set_xticks(ticks, class_names, rotation=90, fontsize=max(4, 9 - n // 20))
    ax.set_yticks(ticks, class_names, fontsize=max(4, 9 - n // 20))
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if matrix[i, j] >= 0.005:
                    ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if matrix[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion (row-normalised)")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
