"""``analyze --run_eval``: a trained model (checkpoint file or ``save_pretrained`` folder) predicts an
annotated set and is scored by the training evaluator, with per-class precision-recall curves added."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import dataclasses

from ..config import DataConfig
from ..data.build import make_loader, open_source
from ..data.coco import CocoDetection
from ..engine.evaluator import predict_dataset, score_results
from ..runtime.device import resolve_device

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    metrics: dict
    results: list[dict]  # COCO results list
    dataset: CocoDetection  # .coco (ground truth), .images_dir, .ids


def evaluate_model(model_path: str | Path, *, images: str | None, annotations: str, data_format: str = "auto",
                   score_threshold: float = 0.5, batch_size: int = 4, device: str = "auto",
                   num_workers: int = -1, seed: int = 0, weights: str = "auto") -> Evaluation:
    """Predict every image of the annotated set at the sizes the model was trained with, then score."""
    from ..models.detector import ObjectDetector

    model = ObjectDetector.from_pretrained(model_path, weights)
    source = open_source(images, annotations, data_format, "val", model.class_names)
    sizes = DataConfig(**dataclasses.asdict(model.resize))  # evaluation transform: the model's sizes only
    dataset = CocoDetection(source.images, source.coco, sizes, train=False, name=source.name)
    if dataset.category_ids != model.category_ids:
        raise ValueError(f"the annotations' category ids {dataset.category_ids} differ from the model's "
                         f"{model.category_ids} ({model_path}); evaluate on data with the training categories")
    run_device = resolve_device(device)
    loader = make_loader(dataset, batch_size=batch_size, num_workers=num_workers, device=run_device, shuffle=False,
                         seed=seed)
    log.info("evaluating %s on %d images of %s", model_path, len(dataset), source.name)
    results = predict_dataset(model.to(run_device), loader, run_device, model.category_ids)
    metrics, table = score_results(dataset.coco, results, score_threshold, dataset.ids, pr_curves=True)
    metrics["weights"] = model.weights
    print(table)
    return Evaluation(metrics, results, dataset)
