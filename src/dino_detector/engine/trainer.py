"""A detection run: resolve the spec, build data, model, criterion, optimizer, EMA and scaler from it, resume,
run the epochs, checkpoint and evaluate, writing the files ARCHITECTURE.md lists ("what a run writes"). The
run skeleton (processes, seeds, time budget, atomic saves) is engine/run.py."""
from __future__ import annotations

import logging
import math
import time

import torch
from torch.nn.parallel import DistributedDataParallel

from ..backbones.adapters import unfreeze
from ..config import Config
from ..data.build import build_datasets, fetch_requested_data, make_loader
from ..losses.criterion import build_criterion
from ..models.detector import ObjectDetector
from ..models.persistence import load_detector_checkpoint, load_model_state
from ..runtime.checkpoint import prune_epoch_checkpoints
from ..runtime.device import resolve_amp
from ..runtime.distributed import barrier
from ..runtime.memory import memory_stats, reset_peak
from ..spec import RunSpec, plan_run
from .ema import ema_model
from .epoch import StepSettings, TrainState, train_one_epoch
from .optim import backbone_groups, build_optimizer, lr_schedule
from .run import RunContext
from .validation import evaluate, predict_testdev

log = logging.getLogger(__name__)


class Trainer:
    """``Trainer(config).fit()``: ``config`` is a ``Config`` (resolved here, see spec.py) or a ``RunSpec``."""

    def __init__(self, config: Config):
        t = config.train
        self.run = RunContext(device=t.device, seed=t.seed, output_dir=t.output_dir, time_budget_min=t.time_budget_min,
                              log_dir=_log_dir(t))
        if self.run.is_main:
            fetch_requested_data(config.data)
        barrier()  # the others find the downloaded files complete
        ckpt = load_detector_checkpoint(t.checkpoint) if t.checkpoint and not t.skip_checkpoint_load else None
        plan = plan_run(config, checkpoint=ckpt)
        self.spec: RunSpec = plan.spec
        spec, t = self.spec, self.spec.train
        self.device = self.run.device
        self.amp_dtype = resolve_amp(amp=t.amp, amp_dtype=t.amp_dtype, device=self.device)
        self.train_set, self.val_set = build_datasets(spec, plan.sources)
        self.model = ObjectDetector(config=spec.model, resize=spec.data).to(self.device)
        if ckpt is not None:
            load_model_state(self.model, ckpt, t.checkpoint)
        log.info(self.model.parameter_summary())
        self.criterion = build_criterion(num_classes=self.model.num_classes, loss_cfg=spec.loss,
                                         softmax=self.model.softmax).to(self.device)
        optimizer = build_optimizer(self.model, lr=t.lr, backbone_lr=t.lr_backbone, layer_decay=t.layer_decay,
                                    weight_decay=t.weight_decay)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        ema = ema_model(self.model, t.ema_decay) if t.ema else None
        self.state = TrainState(self.model, self._wrap(), self.criterion, optimizer, scaler, ema)
        self.start_epoch = 0
        self.history: list[dict] = []  # mean training losses per epoch
        if ckpt is not None and not t.only_evaluate:
            self._resume(ckpt)
        if self.run.is_main:
            spec.save(self.run.out / "config.yaml")

    @property
    def ema(self):
        return self.state.ema

    # ------------------------------------------------------------------ setup
    def _wrap(self) -> torch.nn.Module:
        """The module the training step calls: the model itself, or its DDP wrapper (rebuilt whenever the
        set of trainable parameters changes, since DDP registers them once)."""
        if self.run.dist.world_size == 1:
            return self.model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=ids,
                                       find_unused_parameters=self.spec.train.find_unused_parameters)

    def _unfreeze_backbone(self) -> None:
        """Staged training (--unfreeze_at_epoch): the frozen backbone becomes trainable with its own lr, and the
        head continues at ``unfreeze_lr`` (the ``improved`` preset's second stage)."""
        t = self.spec.train
        unfreeze(self.model.backbone)
        for group in backbone_groups(self.model, t.lr_backbone, t.layer_decay):
            self.state.optimizer.add_param_group({**group, "lr": group["base_lr"]})
        for g in self.state.optimizer.param_groups:
            if g["name"] == "head":
                g["base_lr"] = t.unfreeze_lr
        self.model.backbone_mode = "full"
        self.state.module = self._wrap()
        log.info("backbone unfrozen at epoch %d: backbone lr %.1e, head lr %.1e", t.unfreeze_at_epoch + 1,
                 t.lr_backbone, t.unfreeze_lr)

    def _resume(self, ckpt: dict) -> None:
        self.start_epoch = ckpt["epoch"] + 1
        if self.spec.train.unfreeze_at_epoch and self.start_epoch > self.spec.train.unfreeze_at_epoch:
            self._unfreeze_backbone()  # unfrozen before the checkpoint: its optimizer has the backbone groups
        self.state.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            self.state.scaler.load_state_dict(ckpt["scaler"])
        if self.state.ema is not None and ckpt.get("ema"):
            self.state.ema.load_state_dict(ckpt["ema"])
        self.state.step, self.state.elapsed = ckpt.get("step", 0), ckpt.get("elapsed", 0.0)
        self.history = list(ckpt.get("history", []))
        self.run.restore_rng(ckpt.get("rng"))
        log.info("resumed from %s: next epoch %d, step %d", self.spec.train.checkpoint, self.start_epoch + 1,
                 self.state.step)

    def save(self, name: str, epoch: int):
        """The full training state, the run spec and the model's metadata (a collective: all processes call)."""
        s = self.state
        return self.run.save(self.run.out / name, {
            "model": self.model.state_dict(), "optimizer": s.optimizer.state_dict(),
            "scaler": s.scaler.state_dict() if s.scaler.is_enabled() else None,
            "ema": s.ema.state_dict() if s.ema is not None else None, "epoch": epoch, "step": s.step,
            "elapsed": s.elapsed, "history": self.history, "metadata": self.model.metadata(),
            "spec": self.spec.to_dict()})

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, epoch: int | None, tag: str) -> dict | None:
        """Raw weights (``val_metrics_<tag>.json``) and, with --ema, the average (``val_metrics_ema_<tag>.json``)."""
        if self.val_set is None:
            return None
        common = dict(criterion=self.criterion, spec=self.spec, run=self.run, epoch=epoch, tag=tag,
                      step=self.state.step, elapsed=self.state.elapsed)
        metrics = evaluate(self.model, self.val_set, **common)
        if self.state.ema is not None:
            evaluate(self.state.ema.module, self.val_set, prefix="ema_", **common)
        return metrics

    # ------------------------------------------------------------------ the run
    def fit(self) -> dict | None:
        spec, t = self.spec, self.spec.train
        if t.only_evaluate:
            metrics = self.evaluate(None, "final")
            predict_testdev(self.model, spec=spec, run=self.run)
            return metrics
        loader = make_loader(self.train_set, batch_size=t.batch_size, num_workers=spec.data.num_workers,
                             device=self.device, shuffle=True, seed=t.seed, rank=self.run.dist.rank,
                             world=self.run.dist.world_size)
        settings = StepSettings.of(t, self.amp_dtype)
        steps_per_epoch = math.ceil(len(loader) / settings.accum_steps)
        self.state.schedule = lr_schedule(kind=t.lr_schedule, epochs=t.epochs, steps_per_epoch=steps_per_epoch,
                                          warmup_steps=t.warmup_steps, drop_epoch=t.lr_drop_epoch,
                                          drop_factor=t.lr_drop_factor, drop_fraction=t.lr_drop_fraction,
                                          budget_s=self.run.budget_s, min_factor=t.lr_min_factor)
        epoch = self.start_epoch - 1
        log.info("training %d images for %d epochs on %s x %d (%d steps of %d images per epoch)",
                 len(self.train_set), t.epochs, self.device, self.run.dist.world_size, steps_per_epoch,
                 t.batch_size * self.run.dist.world_size * settings.accum_steps)
        for epoch in range(self.start_epoch, t.epochs):
            # the order of an epoch is fixed by (seed, epoch): a resumed run sees the same batches
            loader.sampler.set_epoch(epoch)
            loader.generator.manual_seed(t.seed + epoch)
            if t.unfreeze_at_epoch and epoch == t.unfreeze_at_epoch:
                self._unfreeze_backbone()
            reset_peak(self.device)
            started = time.time()
            result = train_one_epoch(self.state, loader, epoch=epoch, settings=settings, run=self.run)
            self._epoch_summary(epoch, result.means, result.images, time.time() - started)
            self.save("dino_detector_last.pth", epoch)  # a finished epoch is never lost
            if t.checkpoint_every and (epoch + 1) % t.checkpoint_every == 0:
                self.save(f"dino_detector_epoch_{epoch + 1}.pth", epoch)
                if self.run.is_main:
                    prune_epoch_checkpoints(self.run.out, t.keep_checkpoints)
            if result.out_of_time:
                log.info("time budget of %.1f min reached after %d steps", t.time_budget_min, self.state.step)
                break
            if t.eval_every and (epoch + 1) % t.eval_every == 0 and epoch + 1 < t.epochs:
                self.evaluate(epoch + 1, f"epoch_{epoch + 1}")
        self.save("dino_detector_final.pth", max(epoch, 0))
        metrics = self.evaluate(epoch + 1, "final")
        predict_testdev(self.model, spec=spec, run=self.run)
        self.run.close()
        return metrics

    def _epoch_summary(self, epoch: int, means: dict, images: int, seconds: float) -> None:
        """Losses, time, throughput and memory of an epoch: console, history, TensorBoard."""
        self.history.append({"epoch": epoch + 1, **means})
        memory = memory_stats(self.device)
        logger = self.run.logger
        logger.scalars(means, epoch + 1, "epoch")
        logger.scalars({"seconds": seconds, "images_per_s": images / max(seconds, 1e-9)}, epoch + 1, "epoch_perf")
        logger.scalars(memory, epoch + 1, "epoch_memory")
        cuda = f", CUDA peak {memory['cuda_peak_mb']:.0f} MiB" if "cuda_peak_mb" in memory else ""
        log.info("epoch %d/%d  %s  | %.1f s, %.1f images/s, peak RSS %.0f MiB%s", epoch + 1, self.spec.train.epochs,
                 " ".join(f"{k} {v:.4f}" for k, v in means.items()), seconds, images / max(seconds, 1e-9),
                 memory["cpu_peak_rss_mb"], cuda)


def _log_dir(t) -> str | None:
    """TensorBoard folder: ``log_dir`` (default ``<output_dir>/tensorboard``), then ``experiment_name``."""
    from pathlib import Path
    base = Path(t.log_dir) if t.log_dir else Path(t.output_dir) / "tensorboard"
    return str(base / t.experiment_name) if t.experiment_name else str(base)
