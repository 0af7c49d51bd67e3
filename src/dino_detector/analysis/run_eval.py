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
                   num_workers: int = -1, seed: int = 0, weights: str = "auto", backend: str = "torch",
                   int8: bool = False, calibration_images: str | None = None, slicing=None,
                   show_table: bool = True, int8_method: str = "qdq") -> Evaluation:
    """Predict every image of the annotated set at the sizes the model was trained with, then score.
    ``backend`` / ``int8`` / ``slicing`` (a ``deploy.slicing.SliceSettings``): predict through that
    deployment path instead of the eager model (deploy/)."""
    from ..models.detector import ObjectDetector

    model = ObjectDetector.from_pretrained(model_path, weights)
    source = open_source(images, annotations, data_format, "val", model.class_names)
    sizes = DataConfig(**dataclasses.asdict(model.resize))  # evaluation transform: the model's sizes only
    dataset = CocoDetection(source.images, source.coco, sizes, train=False, name=source.name)
    if dataset.category_ids != model.category_ids:
        raise ValueError(f"the annotations' category ids {dataset.category_ids} differ from the model's "
                         f"{model.category_ids} ({model_path}); evaluate on data with the training categories")
    run_device = resolve_device(device)
    log.info("evaluating %s on %d images of %s", model_path, len(dataset), source.name)
    if backend == "torch" and not int8 and slicing is None:
        loader = make_loader(dataset, batch_size=batch_size, num_workers=num_workers, device=run_device,
                             shuffle=False, seed=seed)
        results = predict_dataset(model.to(run_device), loader, run_device, model.category_ids)
    else:
        results = _deployed_results(model_path, dataset, backend=backend, weights=weights, device=device, int8=int8,
                                    calibration_images=calibration_images, slicing=slicing, batch_size=batch_size,
                                    int8_method=int8_method)
    metrics, table = score_results(dataset.coco, results, score_threshold, dataset.ids, pr_curves=True)
    metrics["weights"] = model.weights
    metrics["deployment"] = {"backend": backend, "int8": int8 and int8_method,
                             "slicing": dataclasses.asdict(slicing) if slicing is not None else None}
    if show_table:
        print(table)
    return Evaluation(metrics, results, dataset)


def _deployed_results(model_path, dataset: CocoDetection, *, backend: str, weights: str, device: str, int8: bool,
                      calibration_images: str | None, slicing, batch_size: int, int8_method: str) -> list[dict]:
    """The COCO results of ``dataset``'s images predicted through a deployment backend (as predict does)."""
    from ..deploy.files import predict_files
    from ..deploy.loader import open_backend

    deployed = open_backend(model_path, backend, weights=weights, device=device, int8=int8,
                            calibration_images=calibration_images, int8_method=int8_method)
    ids = {dataset.image_path(k): image_id for k, image_id in enumerate(dataset.ids)}
    run = predict_files(deployed, list(ids), batch_size=batch_size, threshold=0.0, slicing=slicing,
                        progress=True)
    if run.skipped:
        raise ValueError(f"{len(run.skipped)} image(s) of the set could not be read, e.g. {run.skipped[0][0]}")
    results = []
    for pred in run.predictions:
        for (x0, y0, x1, y1), score, cid in zip(pred.boxes, pred.scores, pred.category_ids):
            results.append({"image_id": int(ids[pred.path]), "category_id": int(cid),
                            "bbox": [round(v, 2) for v in (x0, y0, x1 - x0, y1 - y0)], "score": round(score, 5)})
    return results
