"""PNG plots: accuracy per segment size (one or several models) and the confusion matrix."""
import numpy as np

from roilib.outputs import save_figure


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
