"""Side-by-side comparison of detectors (ours, YOLO, RF-DETR, ...) scored by one evaluator on one
annotation file: any COCO-format results list is accepted."""
from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

from ..engine.evaluator import score_results

log = logging.getLogger(__name__)
TABLE_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "precision", "recall", "f1", "mean_iou",
                 "accuracy")
CHART_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "precision", "recall", "f1")
RESULT_KEYS = {"image_id", "category_id", "bbox", "score"}


def load_results(path: str | Path, gt=None) -> list[dict]:
    """A COCO results list, checked. Against annotations ``gt``: unknown category ids are an error, and
    detections on images the annotations do not hold are dropped (counted)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {path}")
    results = json.loads(path.read_text())
    if not isinstance(results, list) or any(not isinstance(r, dict) or not RESULT_KEYS <= set(r) for r in results):
        raise ValueError(f"{path} is not a COCO results list (entries need {sorted(RESULT_KEYS)})")
    if gt is None:
        return results
    known_images, known_cats = set(gt.getImgIds()), set(gt.getCatIds())
    unknown_cats = {r["category_id"] for r in results} - known_cats
    if unknown_cats:
        raise ValueError(f"{path}: category ids {sorted(unknown_cats)[:10]} are not in the annotations "
                         f"({sorted(known_cats)[:10]}...); map the detector's class ids to the dataset's first")
    kept = [r for r in results if r["image_id"] in known_images]
    if len(kept) < len(results):
        log.warning("%s: %d detections on images outside the annotations were left out", path,
                    len(results) - len(kept))
    return kept


def compare(annotations: str | Path, results_files: list[str], labels: list[str] | None = None,
            score_threshold: float = 0.5) -> list[dict]:
    """One row per results file: {"label", "file", metrics...}, all scored by ``score_results``."""
    from pycocotools.coco import COCO

    if labels and len(labels) != len(results_files):
        raise ValueError(f"{len(labels)} --labels for {len(results_files)} results files")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(annotations))
    rows = []
    for i, f in enumerate(results_files):
        metrics, _ = score_results(gt, load_results(f, gt), score_threshold)
        rows.append({"label": labels[i] if labels else Path(f).stem, "file": str(f), **metrics})
    return rows


def comparison_cells(rows: list[dict]) -> tuple[list[str], list[list[str]], list[list[bool]]]:
    """(header, cell texts, is-best flags) of the comparison table: one row per model."""
    best = {m: max(r[m] for r in rows) for m in TABLE_METRICS}
    cells = [[r["label"]] + [f"{r[m]:.3f}" for m in TABLE_METRICS] for r in rows]
    flags = [[False] + [len(rows) > 1 and r[m] == best[m] for m in TABLE_METRICS] for r in rows]
    return ["model", *TABLE_METRICS], cells, flags


def comparison_table(rows: list[dict]) -> str:
    """Markdown table, best value of each column in bold."""
    header, cells, flags = comparison_cells(rows)
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for row, best in zip(cells, flags):
        lines.append("| " + " | ".join(f"**{c}**" if b else c for c, b in zip(row, best)) + " |")
    return "\n".join(lines)


def comparison_chart(rows: list[dict], path: str | Path) -> None:
    """Grouped bar chart: one group per metric, one bar per model, values printed on the bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(CHART_METRICS)), 4.5), dpi=120)
    for i, r in enumerate(rows):
        xs = [k + (i - (len(rows) - 1) / 2) * width for k in range(len(CHART_METRICS))]
        values = [max(r[m], 0.0) for m in CHART_METRICS]
        bars = ax.bar(xs, values, width, label=r["label"])
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7, padding=1)
    ax.set_xticks(range(len(CHART_METRICS)), CHART_METRICS)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("score")
    ax.set_title("Model comparison (same annotations, same evaluator)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=len(rows), frameon=False)  # off the bars
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
