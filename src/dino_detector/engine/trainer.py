"""Training run: set-up (devices, processes, data, model, optimizer, EMA, scaler), resume, the epoch loop,
checkpoints and evaluation, writing the files of DESIGN.md §4. The same code serves one CPU, one GPU and
``torchrun`` with many processes (see engine/distributed.py); only process 0 writes files and logs."""
from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from ..backbones.adapters import unfreeze
from ..config import Config, DataConfig
from ..data.build import ImageFolderDataset, build_datasets, fetch_requested_data, make_loader
from ..losses.criterion import build_criterion
from ..models.detector import DINOv2ObjectDetector
from .checkpoint import (load_checkpoint, load_model_state, prune_epoch_checkpoints, remove_stale_temporaries,
                         rng_state, save_atomic, set_rng_state)
from .distributed import barrier, gather_objects, init_distributed, sum_across_processes
from .ema import ema_model
from .epoch import to_device, to_float, train_one_epoch
from .evaluator import predict_dataset, score_results
from .logging import RunLogger, write_json
from .memory import memory_stats, reset_peak
from .optim import LRSchedule, backbone_groups, build_optimizer

log = logging.getLogger(__name__)
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
STAT_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "precision", "recall", "f1")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return torch.device(name)


def resolve_amp(t, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--amp`` (None without it), refusing combinations that cannot work."""
    if t.amp_dtype not in AMP_DTYPES:
        raise ValueError(f"amp_dtype must be one of {sorted(AMP_DTYPES)}, got '{t.amp_dtype}'")
    if not t.amp:
        return None
    if device.type != "cuda" and t.amp_dtype == "fp16":
        raise ValueError("--amp_dtype fp16 needs CUDA (its gradient scaler is CUDA-only); on CPU use bf16 or "
                         "drop --amp")
    if device.type == "cpu":
        log.warning("--amp on CPU: bf16 autocast is only fast on CPUs with bf16 units (AMX / AVX512-BF16); "
                    "elsewhere it is far slower than float32")
    return AMP_DTYPES[t.amp_dtype]


def inherit_resize(data_cfg: DataConfig, saved: dict) -> None:
    """Evaluate at the sizes the model was trained with, unless sizes were set for this run."""
    default = DataConfig()
    if (data_cfg.image_size, data_cfg.min_size, data_cfg.max_size) == (default.image_size, default.min_size,
                                                                      default.max_size):
        for key in ("image_size", "min_size", "max_size"):
            if key in saved:
                setattr(data_cfg, key, saved[key])


class Trainer:
    def __init__(self, cfg: Config):
        t = cfg.train
        if t.debug:
            t.epochs, t.lr = t.debug_epochs, t.debug_lr
            t.eval_every = 10  # often enough to watch convergence, cheap on the small subset
        self.cfg = cfg
        self.device = resolve_device(t.device)
        self.dist = init_distributed(self.device.type)
        if self.dist.world_size > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        seed_everything(t.seed + self.dist.rank)  # own augmentation draws per process; DDP syncs the weights
        self.amp_dtype = resolve_amp(t, self.device)
        self.out = Path(t.output_dir)
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.out)
        ckpt = None
        if t.checkpoint and not t.skip_checkpoint_load:
            ckpt = load_checkpoint(t.checkpoint)
            if t.only_evaluate:
                inherit_resize(cfg.data, ckpt["metadata"].get("data", {}))
        if self.dist.is_main:
            fetch_requested_data(cfg)
        barrier()
        if not self.dist.is_main:
            fetch_requested_data(cfg)  # after process 0: finds the files complete and only sets the paths
        self.train_set, self.val_set = build_datasets(cfg)
        if self.train_set is None and not t.only_evaluate:
            raise ValueError("training needs --train_images and --train_annotations (or --only_evaluate)")
        self.frozen_until = self._check_staged_training()
        self.model = self._build_model(ckpt).to(self.device)
        log.info(self.model.parameter_summary())
        self.criterion = build_criterion(self.model.num_classes, cfg.loss, self.model.softmax).to(self.device)
        self.ddp = self._wrap()
        self.optimizer = build_optimizer(self.model, t.lr, self._backbone_lr(), t.layer_decay, t.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.ema = ema_model(self.model, t.ema_decay) if t.ema else None
        self.start_epoch, self.step, self.elapsed = 0, 0, 0.0
        self.history: list[dict] = []  # mean training losses per epoch
        if ckpt is not None and not t.only_evaluate:
            self._resume(ckpt)
        if self.dist.is_main:
            cfg.save(self.out / "config.yaml")
        log_dir = Path(t.log_dir) if t.log_dir else self.out / "tensorboard"
        self.logger = RunLogger(log_dir / t.experiment_name if t.experiment_name else log_dir,
                                enabled=self.dist.is_main)

    # ------------------------------------------------------------------ setup
    def _check_staged_training(self) -> int:
        """The epoch (0-based) at which a frozen backbone is unfrozen; 0 when training is single-stage."""
        t, m = self.cfg.train, self.cfg.model
        if t.unfreeze_at_epoch <= 0 or t.only_evaluate:
            return 0
        if m.backbone_mode == "auto":
            m.backbone_mode = "frozen"
        elif m.backbone_mode != "frozen":
            raise ValueError(f"--unfreeze_at_epoch {t.unfreeze_at_epoch} needs a frozen backbone for the first "
                             f"stage, but --backbone_mode is '{m.backbone_mode}'; use --backbone_mode frozen")
        if t.unfreeze_at_epoch >= t.epochs:
            log.warning("--unfreeze_at_epoch %d >= --epochs %d: the backbone stays frozen", t.unfreeze_at_epoch,
                        t.epochs)
        return t.unfreeze_at_epoch

    def _build_model(self, ckpt: dict | None) -> DINOv2ObjectDetector:
        cfg = self.cfg
        if ckpt is not None and cfg.train.only_evaluate:
            return DINOv2ObjectDetector.from_checkpoint_dict(ckpt, cfg.train.checkpoint)
        if self.train_set is None:
            raise ValueError("--only_evaluate needs --checkpoint with a trained model")
        cfg.model.num_classes = self.train_set.num_classes
        model = DINOv2ObjectDetector(num_classes=self.train_set.num_classes, config=cfg.model,
                                     category_ids=self.train_set.category_ids,
                                     class_names=self.train_set.class_names, data_config=cfg.data)
        if ckpt is not None:
            load_model_state(model, ckpt, cfg.train.checkpoint)
        return model

    def _wrap(self) -> torch.nn.Module:
        """The module the training step calls: the model itself, or its DDP wrapper (rebuilt whenever the
        set of trainable parameters changes, since DDP registers them once)."""
        if self.dist.world_size == 1:
            return self.model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=ids,
                                       find_unused_parameters=self.cfg.train.find_unused_parameters)

    def _backbone_lr(self) -> float:
        # A randomly initialised backbone learns from scratch like the head; a pretrained one is adapted gently.
        t, m = self.cfg.train, self.cfg.model
        if t.lr_backbone > 0:
            return t.lr_backbone
        return t.lr if not m.pretrained or m.dino_model == "tiny" else t.lr * 0.1

    def _unfreeze_backbone(self) -> None:
        """Staged training (--unfreeze_at_epoch): the frozen backbone becomes trainable with its own lr, and
        with --unfreeze_lr the head continues at that rate (the ``improved`` preset's second stage)."""
        t = self.cfg.train
        unfreeze(self.model.backbone)
        for group in backbone_groups(self.model, self._backbone_lr(), t.layer_decay):
            self.optimizer.add_param_group({**group, "lr": group["base_lr"]})
        if t.unfreeze_lr > 0:
            for g in self.optimizer.param_groups:
                if g["name"] == "head":
                    g["base_lr"] = t.unfreeze_lr
        self.model.config.backbone_mode = self.cfg.model.backbone_mode = "full"
        self.ddp = self._wrap()
        log.info("backbone unfrozen at epoch %d: backbone lr %.1e, head lr %.1e", t.unfreeze_at_epoch + 1,
                 self._backbone_lr(), t.unfreeze_lr or t.lr)

    def _resume(self, ckpt: dict) -> None:
        self.start_epoch = ckpt["epoch"] + 1
        if self.frozen_until and self.start_epoch > self.frozen_until:
            self._unfreeze_backbone()  # unfrozen before the checkpoint: its optimizer has the backbone groups
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None and ckpt.get("ema"):
            self.ema.load_state_dict(ckpt["ema"])
        self.step, self.elapsed = ckpt.get("step", 0), ckpt.get("elapsed", 0.0)
        self.history = list(ckpt.get("history", []))
        rng = ckpt.get("rng")
        if isinstance(rng, dict):
            rng = [rng]  # one process
        if rng and len(rng) == self.dist.world_size:
            set_rng_state(rng[self.dist.rank])
        elif rng:
            log.warning("checkpoint written by %d processes, resumed by %d: random augmentation draws are "
                        "reseeded, so the run continues equivalently but not bit-for-bit", len(rng),
                        self.dist.world_size)
        log.info("resumed from %s: next epoch %d, step %d", self.cfg.train.checkpoint, self.start_epoch + 1,
                 self.step)

    def save(self, name: str, epoch: int) -> Path:
        """Every process's RNG state is gathered (a collective: all processes call this); process 0 writes."""
        path = self.out / name
        rng = gather_objects(rng_state())
        if self.dist.is_main:
            save_atomic({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                         "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                         "ema": self.ema.state_dict() if self.ema is not None else None,
                         "epoch": epoch, "step": self.step, "elapsed": self.elapsed, "rng": rng,
                         "history": self.history, "metadata": self.model.metadata(), "config": self.cfg.to_dict()},
                        path)
        barrier()
        return path

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, epoch: int | None, tag: str) -> dict | None:
        """Raw weights (``val_metrics_<tag>.json``) and, with --ema, the average (``val_metrics_ema_<tag>.json``).
        Every process predicts its shard; process 0 scores the gathered results and returns the metrics."""
        if self.val_set is None:
            return None
        metrics = self._evaluate_model(self.model, epoch, tag, "")
        if self.ema is not None:
            self._evaluate_model(self.ema.module, epoch, tag, "ema_")
        return metrics

    def _evaluate_model(self, model, epoch: int | None, tag: str, prefix: str) -> dict | None:
        loader = make_loader(self.val_set, self.cfg, self.device, False, self.dist.rank, self.dist.world_size)
        loss_sums: dict[str, float] = {}

        def add_loss(outputs, targets):  # validation loss: the training criterion on each batch
            _, targets = to_device([], targets, self.device)
            losses = self.criterion(to_float(outputs), targets)
            total = self.criterion.total(losses, outputs)
            for k, v in [("loss", total), *((k, v) for k, v in losses.items() if k.count("_") == 1)]:
                loss_sums[k] = loss_sums.get(k, 0.0) + float(v)
            loss_sums["batches"] = loss_sums.get("batches", 0.0) + 1

        results = predict_dataset(model, loader, self.device, self.model.category_ids, f"evaluate {prefix}{tag}",
                                  add_loss, self.dist.is_main)
        keys = sorted(loss_sums)
        totals = dict(zip(keys, sum_across_processes([loss_sums[k] for k in keys], self.device)))
        results = [r for part in gather_objects(results) for r in part]
        if not self.dist.is_main:
            return None
        metrics, table = score_results(self.val_set.coco, results, self.cfg.train.score_threshold, self.val_set.ids)
        metrics["epoch"] = epoch
        metrics["step"], metrics["train_seconds"] = self.step, round(self.elapsed, 1)  # for AP-vs-time curves
        batches = totals.pop("batches", 0.0)
        metrics["losses"] = {k: v / batches for k, v in totals.items()} if batches else {}
        write_json(metrics, self.out / f"val_metrics_{prefix}{tag}.json")
        if tag == "final":
            write_json(results, self.out / f"val_predictions_{prefix}final.json", indent=None)
            if not prefix:
                print(table)
        group = f"val_{prefix[:-1]}" if prefix else "val"
        self.logger.scalars({k: v for k, v in metrics.items() if k in STAT_KEYS}, self.step, group)
        self.logger.scalars(metrics["losses"], self.step, group)
        self.logger.scalars(metrics["per_class"], self.step, f"{group}_per_class_AP")
        self.logger.scalars(metrics["per_class_precision"], self.step, f"{group}_per_class_precision")
        log.info("%s%s: AP %.4f AP50 %.4f AP75 %.4f (%d images)", prefix, tag, metrics["AP"], metrics["AP50"],
                 metrics["AP75"], metrics["num_images"])
        return metrics

    def predict_testdev(self) -> None:
        d = self.cfg.data
        if not d.testdev_images:
            return
        dataset = ImageFolderDataset(d.testdev_images, self.cfg, d.test_mini_size if d.test_mini else 0)
        loader = make_loader(dataset, self.cfg, self.device, False, self.dist.rank, self.dist.world_size)
        results = predict_dataset(self.model, loader, self.device, self.model.category_ids, desc="test-dev",
                                  progress=self.dist.is_main)
        results = [r for part in gather_objects(results) for r in part]
        if self.dist.is_main:
            write_json(results, self.out / "testdev_predictions_final.json", indent=None)
            log.info("test-dev predictions for %d images written", len(dataset))

    # ------------------------------------------------------------------ the run
    def fit(self) -> dict | None:
        t = self.cfg.train
        if t.only_evaluate:
            metrics = self.evaluate(None, "final")
            self.predict_testdev()
            return metrics
        loader = make_loader(self.train_set, self.cfg, self.device, True, self.dist.rank, self.dist.world_size)
        self.schedule = LRSchedule(t.lr_schedule, t.epochs, math.ceil(len(loader) / max(1, t.grad_accum_steps)),
                                   t.warmup_steps, t.lr_drop_epoch, t.lr_drop_factor, t.lr_drop_fraction,
                                   t.time_budget_min * 60, t.lr_min_factor)
        budget = t.time_budget_min * 60
        deadline = time.time() + budget - self.elapsed if budget > 0 else None
        epoch = self.start_epoch - 1
        log.info("training %d images for %d epochs on %s x %d (%d steps of %d images per epoch)",
                 len(self.train_set), t.epochs, self.device, self.dist.world_size, self.schedule.total_steps //
                 max(t.epochs, 1), t.batch_size * self.dist.world_size * max(1, t.grad_accum_steps))
        for epoch in range(self.start_epoch, t.epochs):
            # the order of an epoch is fixed by (seed, epoch): a resumed run sees the same batches
            loader.sampler.set_epoch(epoch)
            loader.generator.manual_seed(t.seed + epoch)
            if self.frozen_until and epoch == self.frozen_until:
                self._unfreeze_backbone()
            reset_peak(self.device)
            started = time.time()
            means, out_of_time, seen = train_one_epoch(self, loader, epoch, deadline)
            self._epoch_summary(epoch, means, seen, time.time() - started)
            self.save("dino_detector_last.pth", epoch)  # a finished epoch is never lost
            if t.checkpoint_every and (epoch + 1) % t.checkpoint_every == 0:
                self.save(f"dino_detector_epoch_{epoch + 1}.pth", epoch)
                if self.dist.is_main:
                    prune_epoch_checkpoints(self.out, t.keep_checkpoints)
            if out_of_time:
                log.info("time budget of %.1f min reached after %d steps", t.time_budget_min, self.step)
                break
            if t.eval_every and (epoch + 1) % t.eval_every == 0 and epoch + 1 < t.epochs:
                self.evaluate(epoch + 1, f"epoch_{epoch + 1}")
        self.save("dino_detector_final.pth", max(epoch, 0))
        metrics = self.evaluate(epoch + 1, "final")
        self.predict_testdev()
        self.logger.close()
        return metrics

    def _epoch_summary(self, epoch: int, means: dict, images: int, seconds: float) -> None:
        """Losses, time, throughput and memory of an epoch: console, history, TensorBoard."""
        self.history.append({"epoch": epoch + 1, **means})
        memory = memory_stats(self.device)
        self.logger.scalars(means, epoch + 1, "epoch")
        self.logger.scalars({"seconds": seconds, "images_per_s": images / max(seconds, 1e-9)}, epoch + 1,
                            "epoch_perf")
        self.logger.scalars(memory, epoch + 1, "epoch_memory")
        cuda = f", CUDA peak {memory['cuda_peak_mb']:.0f} MiB" if "cuda_peak_mb" in memory else ""
        log.info("epoch %d/%d  %s  | %.1f s, %.1f images/s, peak RSS %.0f MiB%s", epoch + 1, self.cfg.train.epochs,
                 " ".join(f"{k} {v:.4f}" for k, v in means.items()), seconds, images / max(seconds, 1e-9),
                 memory["cpu_peak_rss_mb"], cuda)
