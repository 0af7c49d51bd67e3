"""What a run ships: the best checkpoint by a validation metric (``dino_detector_best.pth``), early stopping
after ``patience`` evaluations without a better one, and ``results.csv``, one row per evaluation (as
Ultralytics writes), beside the JSON files."""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..models.persistence import RUN_CHECKPOINTS

BEST_FILE = RUN_CHECKPOINTS[0]  # dino_detector_best.pth, what a run's folder stands for when a model is asked for
RESULTS_FILE = "results.csv"
RESULT_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "precision", "recall", "f1")


@dataclass
class BestTracker:
    """The best value of ``metric`` so far (higher is better) and the evaluations since it improved."""
    metric: str = "AP"
    patience: int = 0  # 0: never stop early
    value: float = -math.inf
    epoch: int | None = None
    stale: int = 0

    def update(self, metrics: dict, epoch: int) -> bool:
        """Record an evaluation; True when it is the best so far."""
        value = float(metrics[self.metric])
        if value > self.value:
            self.value, self.epoch, self.stale = value, epoch, 0
            return True
        self.stale += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.stale >= self.patience

    def state(self) -> dict:
        return {"metric": self.metric, "value": self.value, "epoch": self.epoch, "stale": self.stale}

    def load(self, saved: dict | None) -> None:
        if saved and saved.get("metric") == self.metric:
            self.value, self.epoch, self.stale = saved["value"], saved["epoch"], saved.get("stale", 0)


@dataclass
class ResultsLog:
    """``results.csv``: epoch, step, training seconds, which weights, the epoch's training losses (``train/``),
    the validation losses (``val/``), the AP metrics and the learning rates (``lr/<group>``); rewritten whole
    after each evaluation, so a column that appears later (the backbone's lr after unfreezing) gets a header."""
    path: Path
    rows: list[dict] = field(default_factory=list)

    @classmethod
    def resume(cls, path: Path) -> "ResultsLog":
        """The rows an earlier part of the run wrote, to continue after them."""
        rows = list(csv.DictReader(path.open())) if path.is_file() else []
        return cls(path, rows)

    def add(self, metrics: dict, *, weights: str, train_losses: dict, lrs: dict) -> None:
        row = {"epoch": metrics.get("epoch"), "step": metrics.get("step"), "seconds": metrics.get("train_seconds"),
               "weights": weights}
        row.update({f"train/{k}": round(v, 6) for k, v in train_losses.items() if k != "epoch"})
        row.update({f"val/{k}": round(v, 6) for k, v in metrics.get("losses", {}).items()})
        row.update({k: round(metrics[k], 6) for k in RESULT_METRICS if k in metrics})
        row.update({f"lr/{k}": v for k, v in lrs.items()})
        same = (str(row["epoch"]), weights)
        self.rows = [r for r in self.rows if (str(r.get("epoch")), r.get("weights")) != same]
        self.rows.append(row)
        columns = list(dict.fromkeys(k for r in self.rows for k in r))
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(self.rows)
        tmp.replace(self.path)
