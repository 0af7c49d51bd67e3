"""Training loop: AdamW with separate backbone / head learning rates, gradient clipping, a step LR drop,
time budget, atomic checkpoints with full state (resume), evaluation and the files of DESIGN.md §4."""
from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..config import Config, DataConfig
from ..data.build import ImageFolderDataset, build_datasets, fetch_requested_data, make_loader
from ..losses.criterion import build_criterion
from ..models.detector import DINOv2ObjectDetector
from .checkpoint import load_checkpoint, rng_state, save_atomic, set_rng_state
from .evaluator import evaluate, predict_dataset
from .logging import ScalarLogger, write_json

log = logging.getLogger(__name__)


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


def inherit_resize(data_cfg: DataConfig, saved: dict) -> None:
    """Evaluate at the sizes the model was trained with, unless sizes were set for this run."""
    default = DataConfig()
    if (data_cfg.image_size, data_cfg.min_size, data_cfg.max_size) == (default.image_size, default.min_size,
                                                                      default.max_size):
        for key in ("image_size", "min_size", "max_size"):
            if key in saved:
                setattr(data_cfg, key, saved[key])


class LRSchedule:
    """Step drop by ``drop_factor`` at ``drop_epoch`` (0: after ``fraction`` of the epochs) or, under a time
    budget, after ``fraction`` of the budget, whichever comes first. Every optimizer group carries its
    undecayed rate as ``base_lr``."""

    def __init__(self, epochs: int, drop_epoch: int, drop_factor: float, fraction: float, budget_s: float):
        self.drop_factor, self.budget_s, self.fraction = drop_factor, budget_s, fraction
        self.drop_epoch = drop_epoch if drop_epoch > 0 else max(1, math.ceil(epochs * fraction))

    def apply(self, optimizer, epoch: int, elapsed_s: float) -> float:
        """Sets every group's lr; returns the head's."""
        dropped = epoch >= self.drop_epoch or (self.budget_s > 0 and elapsed_s >= self.budget_s * self.fraction)
        factor = self.drop_factor if dropped else 1.0
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        return next(g["lr"] for g in optimizer.param_groups if g["name"] == "head")


class Trainer:
    def __init__(self, cfg: Config):
        if cfg.train.debug:
            cfg.train.epochs, cfg.train.lr = cfg.train.debug_epochs, cfg.train.debug_lr
            cfg.train.eval_every = 10  # often enough to watch convergence, cheap on the small subset
        self.cfg = cfg
        seed_everything(cfg.train.seed)
        self.device = resolve_device(cfg.train.device)
        if cfg.train.amp and self.device.type != "cuda":
            log.warning("--amp ignored on CPU: bfloat16 matmuls are far slower than float32 there")
            cfg.train.amp = False
        self.out = Path(cfg.train.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        ckpt = None
        if cfg.train.checkpoint and not cfg.train.skip_checkpoint_load:
            ckpt = load_checkpoint(cfg.train.checkpoint)
            if cfg.train.only_evaluate:
                inherit_resize(cfg.data, ckpt["metadata"].get("data", {}))
        fetch_requested_data(cfg)
        self.train_set, self.val_set = build_datasets(cfg)
        if self.train_set is None and not cfg.train.only_evaluate:
            raise ValueError("training needs --train_images and --train_annotations (or --only_evaluate)")
        self.frozen_until = self._check_staged_training()
        self.model = self._build_model(ckpt).to(self.device)
        log.info(self.model.parameter_summary())
        self.criterion = build_criterion(self.model.num_classes, cfg.loss, self.model.softmax).to(self.device)
        self.optimizer = self._build_optimizer()
        self.start_epoch, self.step, self.elapsed = 0, 0, 0.0
        self.history: list[dict] = []  # mean training losses per epoch
        if ckpt is not None and not cfg.train.only_evaluate:
            self._resume(ckpt)
        cfg.save(self.out / "config.yaml")
        self.logger = ScalarLogger(cfg.train.log_dir or self.out / "tensorboard")

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
            model = DINOv2ObjectDetector.from_metadata(ckpt["metadata"])
            model.load_state_dict(ckpt["model"])
            return model
        if self.train_set is None:
            raise ValueError("--only_evaluate needs --checkpoint with a trained model")
        cfg.model.num_classes = self.train_set.num_classes
        model = DINOv2ObjectDetector(num_classes=self.train_set.num_classes, config=cfg.model,
                                     category_ids=self.train_set.category_ids,
                                     class_names=self.train_set.class_names, data_config=cfg.data)
        if ckpt is not None:
            try:
                model.load_state_dict(ckpt["model"])
            except RuntimeError as err:
                saved = ckpt["metadata"]["model"]
                raise ValueError(
                    f"checkpoint {cfg.train.checkpoint} does not fit this model (it was trained with "
                    f"dino_model={saved['dino_model']}, num_classes={saved['num_classes']}, "
                    f"hidden_dim={saved['hidden_dim']}, attention={saved['attention']}); pass the same "
                    f"settings, or --skip_checkpoint_load to start fresh.\n{str(err)[:500]}") from None
        return model

    def _backbone_lr(self) -> float:
        # A randomly initialised backbone learns from scratch like the head; a pretrained one is adapted gently.
        t, m = self.cfg.train, self.cfg.model
        if t.lr_backbone > 0:
            return t.lr_backbone
        return t.lr if not m.pretrained or m.dino_model == "tiny" else t.lr * 0.1

    def _build_optimizer(self) -> torch.optim.Optimizer:
        t = self.cfg.train
        backbone = [p for n, p in self.model.named_parameters() if p.requires_grad and n.startswith("backbone.")]
        head = [p for n, p in self.model.named_parameters() if p.requires_grad and not n.startswith("backbone.")]
        groups = [{"name": "backbone", "params": backbone, "base_lr": self._backbone_lr()},
                  {"name": "head", "params": head, "base_lr": t.lr}]
        groups = [g for g in groups if g["params"]]
        self.schedule = LRSchedule(t.epochs, t.lr_drop_epoch, t.lr_drop_factor, t.lr_drop_fraction,
                                   t.time_budget_min * 60)
        return torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay)

    def _unfreeze_backbone(self) -> None:
        """Staged training (--unfreeze_at_epoch): the frozen backbone becomes trainable with its own lr, and
        with --unfreeze_lr the head continues at that rate (the ``improved`` preset's second stage)."""
        t = self.cfg.train
        params = list(self.model.backbone.parameters())
        for p in params:
            p.requires_grad_(True)
        self.optimizer.add_param_group({"name": "backbone", "params": params, "base_lr": self._backbone_lr(),
                                        "lr": self._backbone_lr()})
        if t.unfreeze_lr > 0:
            for g in self.optimizer.param_groups:
                if g["name"] == "head":
                    g["base_lr"] = t.unfreeze_lr
        self.model.config.backbone_mode = self.cfg.model.backbone_mode = "full"
        log.info("backbone unfrozen at epoch %d: backbone lr %.1e, head lr %.1e", t.unfreeze_at_epoch + 1,
                 self._backbone_lr(), t.unfreeze_lr or t.lr)

    def _resume(self, ckpt: dict) -> None:
        self.start_epoch = ckpt["epoch"] + 1
        if self.frozen_until and self.start_epoch > self.frozen_until:
            self._unfreeze_backbone()  # unfrozen before the checkpoint: its optimizer has the backbone group
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.step, self.elapsed = ckpt.get("step", 0), ckpt.get("elapsed", 0.0)
        self.history = list(ckpt.get("history", []))
        if "rng" in ckpt:
            set_rng_state(ckpt["rng"])
        log.info("resumed from %s: next epoch %d, step %d", self.cfg.train.checkpoint, self.start_epoch + 1,
                 self.step)

    def save(self, name: str, epoch: int) -> Path:
        path = self.out / name
        save_atomic({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "epoch": epoch,
                     "step": self.step, "elapsed": self.elapsed, "rng": rng_state(), "history": self.history,
                     "metadata": self.model.metadata(), "config": self.cfg.to_dict()}, path)
        return path

    # ------------------------------------------------------------------ loops
    def train_one_epoch(self, loader, epoch: int, deadline: float | None) -> tuple[dict, bool]:
        """One pass over ``loader``. Returns (mean losses, stopped early by the time budget)."""
        t = self.cfg.train
        self.model.train()
        sums: dict[str, float] = {}
        n = 0
        started = time.time()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{t.epochs}", leave=False, dynamic_ncols=True)
        self.optimizer.zero_grad(set_to_none=True)
        for i, (images, targets) in enumerate(bar):
            lr = self.schedule.apply(self.optimizer, epoch, self.elapsed + time.time() - started)
            images = [im.to(self.device, non_blocking=True) for im in images]
            targets = [{k: v.to(self.device) if torch.is_tensor(v) else v for k, v in tg.items()} for tg in targets]
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=t.amp):
                outputs = self.model(images)
            losses = self.criterion(outputs, targets)
            weights = self.criterion.weight_dict(len(outputs.get("aux_outputs", [])), "enc_outputs" in outputs)
            loss = sum(losses[k] * weights[k] for k in losses)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch + 1}, step {self.step}: "
                                         f"{ {k: round(v.item(), 4) for k, v in losses.items()} }")
            (loss / t.grad_accum_steps).backward()
            if (i + 1) % t.grad_accum_steps == 0 or i + 1 == len(loader):
                if t.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            main = {k: v.item() for k, v in losses.items() if k.count("_") == 1}  # final layer only
            main["loss"] = loss.item()
            for k, v in main.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
            bar.set_postfix(loss=f"{main['loss']:.3f}", lr=f"{lr:.1e}")
            if self.step % t.log_frequency == 0:
                self.logger.scalars({**main, "lr": lr}, self.step, "train")
            if deadline is not None and time.time() >= deadline:
                self.elapsed += time.time() - started
                return {k: v / n for k, v in sums.items()}, True
        self.elapsed += time.time() - started
        return {k: v / max(n, 1) for k, v in sums.items()}, False

    def evaluate(self, epoch: int | None, tag: str) -> dict | None:
        if self.val_set is None:
            return None
        loader = make_loader(self.val_set, self.cfg, self.device, shuffle=False)
        metrics, results, table = evaluate(self.model, loader, self.device, self.val_set.coco,
                                           self.model.category_ids, self.cfg.train.score_threshold,
                                           self.val_set.ids)
        metrics["epoch"] = epoch
        write_json(metrics, self.out / f"val_metrics_{tag}.json")
        if tag == "final":
            write_json(results, self.out / "val_predictions_final.json", indent=None)
            print(table)
        self.logger.scalars({k: v for k, v in metrics.items() if k in ("AP", "AP50", "AP75")}, self.step, "val")
        log.info("%s: AP %.4f AP50 %.4f AP75 %.4f (%d images)", tag, metrics["AP"], metrics["AP50"],
                 metrics["AP75"], metrics["num_images"])
        return metrics

    def predict_testdev(self) -> None:
        d = self.cfg.data
        if not d.testdev_images:
            return
        dataset = ImageFolderDataset(d.testdev_images, self.cfg, d.test_mini_size if d.test_mini else 0)
        loader = make_loader(dataset, self.cfg, self.device, shuffle=False)
        results = predict_dataset(self.model, loader, self.device, self.model.category_ids, desc="test-dev")
        write_json(results, self.out / "testdev_predictions_final.json", indent=None)
        log.info("test-dev predictions for %d images written", len(dataset))

    def fit(self) -> dict | None:
        t = self.cfg.train
        if t.only_evaluate:
            metrics = self.evaluate(None, "final")
            self.predict_testdev()
            return metrics
        loader = make_loader(self.train_set, self.cfg, self.device, shuffle=True)
        budget = t.time_budget_min * 60
        deadline = time.time() + budget - self.elapsed if budget > 0 else None
        epoch = self.start_epoch - 1
        log.info("training %d images for %d epochs on %s (%d steps per epoch)", len(self.train_set), t.epochs,
                 self.device, len(loader))
        for epoch in range(self.start_epoch, t.epochs):
            # the loader's shuffle order is fixed by (seed, epoch): a resumed run sees the same batches
            loader.generator.manual_seed(t.seed + epoch)
            if self.frozen_until and epoch == self.frozen_until:
                self._unfreeze_backbone()
            means, out_of_time = self.train_one_epoch(loader, epoch, deadline)
            self.logger.scalars(means, epoch + 1, "epoch")
            self.history.append({"epoch": epoch + 1, **means})
            log.info("epoch %d/%d  %s  (%.0f s)", epoch + 1, t.epochs,
                     " ".join(f"{k} {v:.4f}" for k, v in means.items()), self.elapsed)
            if out_of_time:
                log.info("time budget of %.1f min reached after %d steps", t.time_budget_min, self.step)
                break
            if t.checkpoint_every and (epoch + 1) % t.checkpoint_every == 0:
                self.save(f"dino_detector_epoch_{epoch + 1}.pth", epoch)
            if t.eval_every and (epoch + 1) % t.eval_every == 0 and epoch + 1 < t.epochs:
                self.evaluate(epoch + 1, f"epoch_{epoch + 1}")
        self.save("dino_detector_final.pth", max(epoch, 0))
        metrics = self.evaluate(epoch + 1, "final")
        self.predict_testdev()
        self.logger.close()
        return metrics
