"""Analysis charts (matplotlib, Agg): metric bars, per-class bars, confidence histogram, class distribution,
precision-recall curves and the confusion-matrix heat map. Each function writes one PNG and labels classes
by name; sizes grow with the number of classes so that 80 COCO classes stay readable."""
from __future__ import annotations

from pathlib import Path

import numpy as np

OVERALL_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "precision", "recall", "f1", "mean_iou",
                   "accuracy")
PER_CLASS_METRICS = (("per_class", "AP"), ("per_class_AP50", "AP50"), ("per_class_recall", "AR100"),
                     ("per_class_precision", "precision"))
DPI = 120


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)
    return Path(path)


def metric_bars(metrics: dict, path: str | Path) -> Path:
    """The overall metrics present in ``metrics`` (undefined ones, -1, left out), value on each bar."""
    plt = _pyplot()
    keys = [k for k in OVERALL_METRICS if isinstance(metrics.get(k), (int, float)) and metrics[k] >= 0]
    fig, ax = plt.subplots(figsize=(max(7, 0.8 * len(keys)), 4))
    bars = ax.bar(keys, [metrics[k] for k in keys], color="#3274a1")
    ax.bar_label(bars, labels=[f"{metrics[k]:.3f}" for k in keys], fontsize=8, padding=1)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("score")
    threshold = metrics.get("score_threshold")
    ax.set_title("Overall metrics" + (f" (precision ... accuracy at score >= {threshold})" if threshold else ""))
    ax.tick_params(axis="x", rotation=30)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def per_class_bars(metrics: dict, path: str | Path) -> Path:
    """Horizontal grouped bars: per class AP, AP50, AR100 and precision (those the metrics hold)."""
    plt = _pyplot()
    series = [(label, metrics[key]) for key, label in PER_CLASS_METRICS if isinstance(metrics.get(key), dict)]
    names = list(series[0][1])
    height = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(9, max(3.0, 0.25 * len(names) * len(series) + 1.2)))
    ys = np.arange(len(names))
    for i, (label, values) in enumerate(series):
        raw = [values.get(n, -1.0) for n in names]
        bars = ax.barh(ys + (i - (len(series) - 1) / 2) * height, [max(v, 0.0) for v in raw], height, label=label)
        if len(names) <= 20:  # -1: undefined (no boxes / no detections of the class)
            ax.bar_label(bars, labels=[f"{v:.2f}" if v >= 0 else "n/a" for v in raw], fontsize=7, padding=2)
    ax.set_yticks(ys, names)
    ax.invert_yaxis()  # first class on top
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("score")
    ax.set_title("Per-class metrics")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def confidence_histogram(scores: list[float], path: str | Path, threshold: float,
                         true_positive: list[bool] | None = None) -> Path:
    """Scores of all detections; split into true and false positives when ``true_positive`` is given."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    bins = np.linspace(0, 1, 26)
    scores_np = np.asarray(scores, dtype=float)
    if true_positive is not None:
        tp = np.asarray(true_positive, dtype=bool)
        ax.hist([scores_np[tp], scores_np[~tp]], bins=bins, stacked=True, color=["#2ca02c", "#d62728"],
                label=[f"true positive ({tp.sum()})", f"false positive ({(~tp).sum()})"])
    else:
        ax.hist(scores_np, bins=bins, color="#3274a1", label=f"detections ({len(scores_np)})")
    ax.axvline(threshold, color="black", linestyle="--", label=f"confidence threshold {threshold}")
    ax.set_yscale("log")  # low-score false positives outnumber the rest by far
    ax.set_xlabel("confidence score")
    ax.set_ylabel("detections (log scale)")
    ax.set_title("Confidence scores" + (" (IoU >= 0.5, same class = true positive)" if true_positive is not None else ""))
    ax.legend(fontsize=8)
    return _save(fig, path)


def class_distribution(names: list[str], predicted: dict[str, int], path: str | Path, threshold: float,
                       truth: dict[str, int] | None = None) -> Path:
    """Boxes per class: predictions at or above ``threshold`` beside the ground truth when given."""
    plt = _pyplot()
    series = [(f"predicted (score >= {threshold})", predicted)] + ([("ground truth", truth)] if truth else [])
    height = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(9, max(3.0, 0.3 * len(names) * len(series) + 1.2)))
    ys = np.arange(len(names))
    for i, (label, counts) in enumerate(series):
        vals = [counts.get(n, 0) for n in names]
        bars = ax.barh(ys + (i - (len(series) - 1) / 2) * height, vals, height, label=label)
        if len(names) <= 20:
            ax.bar_label(bars, fontsize=7, padding=2)
    ax.set_yticks(ys, names)
    ax.invert_yaxis()
    ax.set_xlabel("boxes")
    ax.set_title("Class distribution")
    ax.legend(loc="lower right", fontsize=8)
    ax.margins(x=0.12)
    return _save(fig, path)


def pr_curves(curves: dict, path: str | Path) -> Path:
    """One panel per class: pycocotools' interpolated precision against recall at IoU 0.5 and 0.75."""
    plt = _pyplot()
    recall = np.asarray(curves["recall"])
    names = list(curves["IoU50"])
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.0 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for key, style in (("IoU50", "-"), ("IoU75", "--")):
            precision = np.asarray(curves[key][name])
            defined = precision > -1
            ap = precision[defined].mean() if defined.any() else float("nan")
            ax.plot(recall[defined], precision[defined], style, label=f"{key} (AP {ap:.3f})")
        ax.set_title(name, fontsize=10)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall", fontsize=8)
        ax.set_ylabel("precision", fontsize=8)
        ax.legend(fontsize=7, loc="lower left")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle("Precision-recall curves per class")
    return _save(fig, path)


def confusion_heatmap(confusion: dict, path: str | Path) -> Path:
    """Rows = truth, columns = prediction, coloured by row share (each true class sums to 1), counts written."""
    plt = _pyplot()
    labels = confusion["labels"]
    counts = np.asarray(confusion["matrix"], dtype=float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = max(4.5, 0.45 * len(labels) + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(labels) <= 25:
        for i in range(len(labels)):
            for j in range(len(labels)):
                ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=8,
                        color="white" if shares[i, j] > 0.6 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class's row")
    ax.set_title("Confusion matrix (counts; colour = row share)")
    return _save(fig, path)
