"""An ablation's results across variants and seeds: the summary table (overall, by segment
size, on the context pairs), the per-class table, results.csv / results.json and the plot.

Every figure is a mean class accuracy (a class's accuracy for the per-class columns) with its
spread, (max - min) / 2 over the seeds, from the eval.json that EvaluateAccuracy.py wrote."""
import csv
import os

import numpy as np

from roilib.errors import one_line
from roilib.outputs import atomic_write, save_figure, write_json

OUTPUTS = ("results.csv", "results.json", "results.png")
CLASS_PREFIX = "class "
SIZE_PREFIX = "size "   # then the evaluation's bin: "<1k", "1k-2k", ... (those the data has)


def active_pairs(pairs):
    """{figure: classes} without the pairs given no classes (a dataset with no designed pair)."""
    return {name: classes for name, classes in pairs.items() if str(classes or "").strip()}


def pair_accuracy(per_class, classes):
    """Mean accuracy over the named classes found in the evaluation; None if none is."""
    found = [per_class[c.strip()] for c in classes.split(",")
             if c.strip() and per_class.get(c.strip()) is not None]
    return float(np.mean(found)) if found else None


def metrics_of(result, pairs):
    """The figures compared across variants, from one eval.json; `pairs`: {figure: classes}."""
    per_class = {row["class"]: row["accuracy"] for row in result["per_class"]}
    figures = {"mean_class_accuracy": result["mean_class_accuracy"], "accuracy": result["accuracy"]}
    figures.update({f"{SIZE_PREFIX}{row['bin']}": row["mean_class_accuracy"] for row in result["by_size"]})
    figures.update({name: pair_accuracy(per_class, classes) for name, classes in active_pairs(pairs).items()})
    figures.update({f"{CLASS_PREFIX}{name}": value for name, value in per_class.items()})
    return figures


def aggregate(results, pairs):
    """{variant: [eval.json per seed]} -> variant -> {figure: (mean, spread, values)}."""
    table = {}
    for variant, runs in results.items():
        per_seed = [metrics_of(r, pairs) for r in runs]
        row = {}
        for key in dict.fromkeys(k for m in per_seed for k in m):
            values = [m[key] for m in per_seed if m.get(key) is not None]
            if values:
                row[key] = (float(np.mean(values)), float((max(values) - min(values)) / 2), values)
        table[variant] = row
    return table


def summary_keys(table, pairs):
    """(figure keys, column heads) of the summary table."""
    names = list(active_pairs(pairs))
    bins = named(table, SIZE_PREFIX)
    keys = ["mean_class_accuracy", "accuracy"] + [f"{SIZE_PREFIX}{b}" for b in bins] + names
    return keys, ["mean class acc", "accuracy"] + bins + names


def named(table, prefix):
    """The names after `prefix` among the table's figures (size bins, classes), in the
    evaluation's order."""
    keys = dict.fromkeys(k for row in table.values() for k in row if k.startswith(prefix))
    return [k[len(prefix):] for k in keys]


def markdown(table, keys, heads):
    lines = ["| variant | " + " | ".join(heads) + " |", "|" + "---|" * (len(heads) + 1)]
    for variant, row in table.items():
        cells = [cell(row[k]) if k in row else "-" for k in keys]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cell(figure):
    """"mean ± spread" in %; a figure of one seed has no spread to show."""
    mean, spread, values = figure
    return f"{100 * mean:.1f}" if len(values) == 1 else f"{100 * mean:.1f} ± {100 * spread:.1f}"


def format_table(table, pairs):
    return markdown(table, *summary_keys(table, pairs))


def format_class_table(table, classes=None):
    """Accuracy per class (all of them, or `classes`) and variant."""
    names = named(table, CLASS_PREFIX) if classes is None else classes
    return markdown(table, [f"{CLASS_PREFIX}{n}" for n in names], [one_line(n) for n in names])


def write_results(table, results, folder, params, pairs):
    """results.csv (every figure, every variant), results.json (`params`, the figures per seed,
    both tables) and results.png in `folder`."""
    os.makedirs(folder, exist_ok=True)
    keys = list(dict.fromkeys(k for row in table.values() for k in row))
    with atomic_write(os.path.join(folder, "results.csv"), newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant"] + [f"{k} {part}" for k in keys for part in ("mean", "spread")] + ["seeds"])
        for variant, row in table.items():
            cells = [f"{row[k][i]:.4f}" if k in row else "" for k in keys for i in (0, 1)]
            writer.writerow([variant] + cells + [len(results[variant])])
    summary = {"params": params,
               "variants": {v: {k: {"mean": m, "spread": s, "per_seed": vals} for k, (m, s, vals) in row.items()}
                            for v, row in table.items()},
               "table": format_table(table, pairs), "class_table": format_class_table(table)}
    write_json(os.path.join(folder, "results.json"), summary, indent=1)   # never a bare NaN
    plot_results(table, os.path.join(folder, "results.png"), pairs)


def plot_results(table, path, pairs):
    """Grouped bars: mean class accuracy per variant, overall, per size bin and on the
    context pairs."""
    from roilib.metrics import pyplot
    plt = pyplot()
    pair_classes = active_pairs(pairs)
    bins = named(table, SIZE_PREFIX)
    keys = ["mean_class_accuracy"] + [f"{SIZE_PREFIX}{b}" for b in bins] + list(pair_classes)
    labels = (["overall"] + [f"segments {b} px" for b in bins]
              + [f"{name} ({classes.replace(',', '/')})" for name, classes in pair_classes.items()])
    variants = list(table)
    width = 0.8 / len(keys)
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(variants)), 4.8))
    x = np.arange(len(variants))
    for j, (key, label) in enumerate(zip(keys, labels)):
        means = [table[v].get(key, (0, 0))[0] for v in variants]
        spreads = [table[v].get(key, (0, 0))[1] for v in variants]
        ax.bar(x + (j - (len(keys) - 1) / 2) * width, means, width, yerr=spreads, capsize=2, label=label)
    ax.set_xticks(x, variants, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean class accuracy (mean ± spread over seeds)")
    ax.set_title("ROI-mask variants: overall, by segment size" + (", and on the context pairs" if pair_classes else ""))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.22))  # below: never over bars
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
