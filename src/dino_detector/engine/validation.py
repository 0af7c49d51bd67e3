"""Evaluation inside a run: every process predicts its shard of the validation set (with the training
criterion's losses on each batch), process 0 scores the gathered results with pycocotools and writes
``val_metrics_<tag>.json`` (and the final predictions); test-dev images are predicted the same way."""
from __future__ import annotations

import logging

from ..data.build import ImageFolderDataset, make_loader
from ..runtime.distributed import gather_objects, sum_across_processes
from ..runtime.logging import write_json
from .epoch import to_device, to_float
from .evaluator import predict_dataset, score_results
from .run import RunContext

log = logging.getLogger(__name__)
STAT_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "precision", "recall", "f1")


def _loader(dataset, spec, run: RunContext):
    return make_loader(dataset, batch_size=spec.train.batch_size, num_workers=spec.data.num_workers, device=run.device,
                       shuffle=False, seed=spec.train.seed, rank=run.dist.rank, world=run.dist.world_size)


def evaluate(model, dataset, *, criterion, spec, run: RunContext, epoch: int | None, tag: str, prefix: str = "",
             step: int = 0, elapsed: float = 0.0, split: str = "val", weights: str = "raw") -> dict | None:
    """Metrics of ``model`` on ``dataset`` (on process 0; None elsewhere), written as
    ``<split>_metrics_<prefix><tag>.json`` with the ``weights`` they measured (raw or ema); ``tag`` ``final``
    also writes the predictions (``<split>_predictions_<prefix>final.json``)."""
    loss_sums: dict[str, float] = {}

    def add_loss(outputs, targets):  # validation loss: the training criterion on each batch
        _, targets = to_device([], targets, run.device)
        losses = criterion(to_float(outputs), targets)
        for k, v in [("loss", criterion.total(losses, outputs)), *criterion.final_losses(losses).items()]:
            loss_sums[k] = loss_sums.get(k, 0.0) + float(v)
        loss_sums["batches"] = loss_sums.get("batches", 0.0) + 1

    results = predict_dataset(model, _loader(dataset, spec, run), run.device, model.category_ids,
                              f"evaluate {prefix}{tag}", add_loss, run.is_main)
    keys = sorted(loss_sums)
    totals = dict(zip(keys, sum_across_processes([loss_sums[k] for k in keys], run.device)))
    results = [r for part in gather_objects(results) for r in part]
    if not run.is_main:
        return None
    metrics, table = score_results(dataset.coco, results, spec.train.score_threshold, dataset.ids)
    metrics["epoch"], metrics["weights"] = epoch, weights
    metrics["step"], metrics["train_seconds"] = step, round(elapsed, 1)  # for AP-vs-time curves
    batches = totals.pop("batches", 0.0)
    metrics["losses"] = {k: v / batches for k, v in totals.items()} if batches else {}
    write_json(metrics, run.out / f"{split}_metrics_{prefix}{tag}.json")
    if tag == "final":
        write_json(results, run.out / f"{split}_predictions_{prefix}final.json", indent=None)
        if not prefix:
            print(table)
    group = f"{split}_{prefix[:-1]}" if prefix else split
    run.logger.scalars({k: v for k, v in metrics.items() if k in STAT_KEYS}, step, group)
    run.logger.scalars(metrics["losses"], step, group)
    run.logger.scalars(metrics["per_class"], step, f"{group}_per_class_AP")
    run.logger.scalars(metrics["per_class_precision"], step, f"{group}_per_class_precision")
    log.info("%s %s%s (%s weights): AP %.4f AP50 %.4f AP75 %.4f (%d images)", split, prefix, tag, weights,
             metrics["AP"], metrics["AP50"], metrics["AP75"], metrics["num_images"])
    return metrics


def predict_testdev(model, *, spec, run: RunContext) -> None:
    """``testdev_predictions_final.json`` for ``--testdev_images`` (the first ``test_mini_size`` with
    ``--test_mini``)."""
    d = spec.data
    if not d.testdev_images:
        return
    dataset = ImageFolderDataset(d.testdev_images, model.resize, d.test_mini_size if d.test_mini else 0)
    results = predict_dataset(model, _loader(dataset, spec, run), run.device, model.category_ids, desc="test-dev",
                              progress=run.is_main)
    results = [r for part in gather_objects(results) for r in part]
    if run.is_main:
        write_json(results, run.out / "testdev_predictions_final.json", indent=None)
        log.info("test-dev predictions for %d images written", len(dataset))
