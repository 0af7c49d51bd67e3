"""``dino_detector.fit``: training from Python with the settings of the command line (one config: the flag
names are the keywords), returning the metrics and the weights to ship."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import build_config


@dataclass
class FitResult:
    metrics: dict | None  # final validation metrics of the weights the run ships (None without validation)
    weights: Path  # the checkpoint to ship: dino_detector_best.pth, else dino_detector_final.pth
    output_dir: Path
    best: dict  # {"metric", "value", "epoch"} of the best evaluation
    spec: object  # the resolved run specification (dino_detector.spec.RunSpec), as written to config.yaml


def fit(data: str | None = None, *, preset: str | None = None, config: str | None = None, **settings) -> FitResult:
    """Train (and validate, and test when the data has a test split) a detector.

    ``data``: a dataset folder, as ``train --data`` (its layout is detected); ``preset``: as ``--preset``;
    ``config``: a YAML file, as ``--config``; every other keyword is a setting of ``python -m
    dino_detector.train --help`` by its flag name (``epochs=30``, ``output_dir="runs/a"``, ``ema=True``).
    A wrong name or value raises a ``ValueError`` naming it before anything is loaded.

        result = dino_detector.fit("datasets/cells", preset="two-stage", time_budget_min=10,
                                   output_dir="runs/cells")
        model = dino_detector.ObjectDetector.from_pretrained(result.weights)
    """
    from .engine.selection import BEST_FILE
    from .engine.trainer import Trainer
    from .runtime.logging import setup_console

    cfg = build_config(preset, config, data=data, **settings)
    setup_console()
    trainer = Trainer(cfg)
    metrics = trainer.fit()
    out = trainer.run.out
    best = out / BEST_FILE
    return FitResult(metrics, best if best.is_file() else out / "dino_detector_final.pth", out,
                     trainer.best.state(), trainer.spec)
