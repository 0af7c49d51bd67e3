"""A detection run: resolve the spec, build data, model, criterion, optimizer, EMA and scaler from it, resume
(or start from a trained detector), run the epochs, checkpoint, evaluate, keep the best checkpoint and stop
early, writing the files ARCHITECTURE.md lists ("what a run writes"). The run skeleton (processes, seeds,
time budget, atomic saves) is engine/run.py; best-checkpoint selection and results.csv are selection.py."""
from __future__ import annotations

import logging
import math
import time

import torch
from torch.nn.parallel import DistributedDataParallel

from ..backbones.adapters import unfreeze
from ..backbones.encoder_file import ENCODER_FILE, save_backbone_encoder
from ..config import Config
from ..data.build import build_datasets, evaluation_dataset, fetch_requested_data, make_loader
from ..data.transforms import uses_strong_augmentation
from ..losses.criterion import build_criterion
from ..models.detector import ObjectDetector
from ..models.persistence import load_detector_checkpoint, load_model_state
from ..models.transfer import init_from
from ..runtime.checkpoint import prune_epoch_checkpoints
from ..runtime.device import resolve_amp
from ..runtime.distributed import barrier, sum_across_processes
from ..runtime.memory import memory_stats, reset_peak
from ..runtime.schedule import Clock, strong_augmentation_window
from ..spec import RunSpec, plan_run
from .ema import ema_model
from .epoch import EpochResult, StepSettings, TrainState, train_one_epoch
from .guard import StepGuard
from .optim import backbone_groups, build_optimizer, lr_schedule
from .run import RunContext, RunInterrupted
from .selection import BEST_FILE, RESULTS_FILE, BestTracker, ResultsLog
from .validation import evaluate, predict_testdev

log = logging.getLogger(__name__)
CPU_RECIPE = "--preset two-stage --image_size 384"  # README, "Train on your own data"
LAST_FILE = "dino_detector_last.pth"  # written after every epoch, and by a run stopped mid-epoch
FINAL_FILE = "dino_detector_final.pth"  # the weights at the end of training


class Trainer:
    """``Trainer(config).fit()``: ``config`` is a ``Config`` (resolved here, see spec.py) or a ``RunSpec``."""

    def __init__(self, config: Config):
        t = config.train
        if t.init_from and t.checkpoint and not t.skip_checkpoint_load:
            raise ValueError("--init_from starts a new run from a trained detector; --checkpoint resumes one: "
                             "give one of them")
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
        self.test_set = evaluation_dataset(plan.sources.test, spec) if plan.sources.test is not None else None
        self.model = ObjectDetector(config=spec.model, resize=spec.data).to(self.device)
        if ckpt is not None:  # evaluated weights: the chosen ones; resumed: the raw ones (EMA resumes on its own)
            self.model.weights = load_model_state(self.model, ckpt, t.checkpoint,
                                                  t.weights if t.only_evaluate else "raw")
        elif t.init_from:
            init_from(self.model, t.init_from, t.weights)
        loaded = "; its weights then loaded from --init_from (line above)" if ckpt is None and t.init_from else ""
        log.info(self.model.parameter_summary() + loaded)
        self.criterion = build_criterion(num_classes=self.model.num_classes, loss_cfg=spec.loss,
                                         softmax=self.model.softmax).to(self.device)
        optimizer = build_optimizer(self.model, lr=t.lr, backbone_lr=t.lr_backbone, layer_decay=t.layer_decay,
                                    weight_decay=t.weight_decay)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        ema = ema_model(self.model, t.ema_decay) if t.ema and not t.only_evaluate else None
        self.state = TrainState(self.model, self._wrap(), self.criterion, optimizer, scaler, ema,
                                guard=StepGuard(t.max_bad_steps, "training run"))
        self.start_epoch = 0
        self.resume_progress: dict | None = None  # the part of an epoch a checkpoint written mid-epoch trained
        self.history: list[dict] = []  # mean training losses per epoch
        self.best = BestTracker(t.best_metric, t.patience)
        resuming = ckpt is not None and not t.only_evaluate
        self.results = (ResultsLog.resume if resuming else ResultsLog)(self.run.out / RESULTS_FILE)
        if resuming:
            self._resume(ckpt)
        if self.run.is_main:
            spec.save(self.run.out / "config.yaml")

    @property
    def ema(self):
        return self.state.ema

    @property
    def deployed(self) -> str:
        """Which weights the run ships: the EMA's when it keeps one."""
        return "ema" if self.state.ema is not None else "raw"

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
        self.state.guard.load(ckpt.get("bad_steps"))
        self.resume_progress = ckpt.get("progress")
        self.history = list(ckpt.get("history", []))
        self.best.load(ckpt.get("best"))
        self.run.restore_rng(ckpt.get("rng"))
        within = (f" after its first {self.resume_progress['windows']} steps" if self.resume_progress else "")
        log.info("resumed from %s: epoch %d%s, step %d", self.spec.train.checkpoint, self.start_epoch + 1, within,
                 self.state.step)

    def save(self, name: str, epoch: int, progress: dict | None = None):
        """The full training state, the run spec and the model's metadata (a collective: all processes call).
        ``epoch``: the last finished one (0-based); ``progress``: how far the next one got (a mid-epoch stop)."""
        s = self.state
        path = self.run.out / name
        self.run.save(path, {
            "model": self.model.state_dict(), "optimizer": s.optimizer.state_dict(),
            "scaler": s.scaler.state_dict() if s.scaler.is_enabled() else None,
            "ema": s.ema.state_dict() if s.ema is not None else None, "epoch": epoch, "step": s.step,
            "elapsed": s.elapsed, "history": self.history, "best": self.best.state(), "deploy": self.deployed,
            "bad_steps": s.guard.state(), "progress": progress, "metadata": self.model.metadata(),
            "spec": self.spec.to_dict()})
        if name == LAST_FILE:
            s.guard.last_checkpoint = str(path)
        return path

    def _save_encoder(self) -> None:
        """After detection pretraining (--proposals): the trained encoder alone, as ``encoder_final.pth``, so
        that ``--dino_model <this run>`` starts (or probes, frozen) a detector from it."""
        model = self.state.ema.module if self.deployed == "ema" else self.model
        path = self.run.out / ENCODER_FILE
        if save_backbone_encoder(model.backbone.vit, self.spec.model.dino_model, path):
            log.info("pretrained encoder: %s (--dino_model %s; the whole detector: --init_from %s)", path,
                     self.run.out, self.run.out / FINAL_FILE)
        else:
            log.info("no encoder file for a LoRA-adapted backbone; --init_from %s carries the whole detector",
                     self.run.out / FINAL_FILE)

    # ------------------------------------------------------------------ evaluation and selection
    def evaluate(self, epoch: int | None, tag: str) -> dict | None:
        """Raw weights (``val_metrics_<tag>.json``) and, with --ema, the average (``val_metrics_ema_<tag>.json``);
        returns the deployed weights' metrics on process 0 (None elsewhere, or without a validation set)."""
        if self.val_set is None:
            return None
        common = dict(criterion=self.criterion, spec=self.spec, run=self.run, epoch=epoch, tag=tag,
                      step=self.state.step, elapsed=self.state.elapsed)
        evaluated = {self.model.weights: evaluate(self.model, self.val_set, weights=self.model.weights, **common)}
        if self.state.ema is not None:
            evaluated["ema"] = evaluate(self.state.ema.module, self.val_set, prefix="ema_", weights="ema", **common)
        if self.run.is_main:
            lrs = {g["name"]: g["lr"] for g in self.state.optimizer.param_groups}
            for which, metrics in evaluated.items():
                self.results.add(metrics, weights=which, train_losses=self.history[-1] if self.history else {},
                                 lrs=lrs)
        return evaluated[self.deployed if self.deployed in evaluated else self.model.weights]

    def _select(self, metrics: dict | None, epoch: int) -> bool:
        """Keep ``dino_detector_best.pth`` when the deployed weights improved; True when the run should stop
        (early stopping). Process 0 decides; every process takes part in the save and the decision."""
        improved = self.run.is_main and metrics is not None and self.best.update(metrics, epoch)
        stop = self.run.is_main and self.best.should_stop
        improved, stop = (v > 0 for v in sum_across_processes([float(improved), float(stop)], self.device))
        if improved:
            self.save(BEST_FILE, max(epoch - 1, 0))
            if self.run.is_main:
                log.info("best %s %.4f (%s weights) -> %s", self.best.metric, self.best.value, self.deployed, BEST_FILE)
        if stop:
            log.info("early stopping: %d evaluations without a better %s (best %.4f at epoch %s)",
                     self.best.stale, self.best.metric, self.best.value, self.best.epoch)
        return stop

    def evaluate_test(self) -> dict | None:
        """The shipped weights (the best checkpoint's, else the final ones) on the test split:
        ``test_metrics_final.json``."""
        if self.test_set is None:
            return None
        best = self.run.out / BEST_FILE
        model = (ObjectDetector.from_checkpoint(best).to(self.device) if best.is_file()
                 else self.state.ema.module if self.state.ema is not None else self.model)
        return evaluate(model, self.test_set, criterion=self.criterion, spec=self.spec, run=self.run,
                        epoch=None, tag="final", split="test", weights=self.deployed, step=self.state.step,
                        elapsed=self.state.elapsed)

    # ------------------------------------------------------------------ the run
    def fit(self) -> dict | None:
        spec, t = self.spec, self.spec.train
        if t.only_evaluate:
            metrics = self.evaluate(None, "final")
            self.evaluate_test()
            predict_testdev(self.model, spec=spec, run=self.run)
            return metrics
        loader = make_loader(self.train_set, batch_size=t.batch_size, num_workers=spec.data.num_workers,
                             device=self.device, shuffle=True, seed=t.seed, rank=self.run.dist.rank,
                             world=self.run.dist.world_size, sizes=spec.data)
        settings = StepSettings.of(t, self.amp_dtype)
        steps_per_epoch = math.ceil(len(loader) / settings.accum_steps)
        self.state.schedule = lr_schedule(kind=t.lr_schedule, epochs=t.epochs, steps_per_epoch=steps_per_epoch,
                                          warmup_steps=t.warmup_steps, drop_epoch=t.lr_drop_epoch,
                                          drop_factor=t.lr_drop_factor, drop_fraction=t.lr_drop_fraction,
                                          budget_s=self.run.budget_s, min_factor=t.lr_min_factor)
        log.info("training %d images for %d epochs on %s x %d (%d steps of %d images per epoch)",
                 len(self.train_set), t.epochs, self.device, self.run.dist.world_size, steps_per_epoch,
                 t.batch_size * self.run.dist.world_size * settings.accum_steps)
        hint = self._pace_hint(steps_per_epoch) if self.device.type == "cpu" and self.run.is_main else None
        with self.run.stop_requests:  # SIGTERM / SIGINT: finish the step, save, stop (RunInterrupted)
            epoch = self._train_epochs(loader, settings, hint)
        self.save(FINAL_FILE, max(epoch, 0))
        if spec.data.proposals and self.run.is_main:
            self._save_encoder()
        metrics = self.evaluate(epoch + 1, "final")
        if self.val_set is not None:
            self._select(metrics, epoch + 1)
        self.evaluate_test()
        predict_testdev(self.model, spec=spec, run=self.run)
        self.run.close()
        return metrics

    def _train_epochs(self, loader, settings: StepSettings, hint) -> int:
        """The epochs from ``start_epoch``, each checkpointed and evaluated as the settings say, until the last,
        the time budget or early stopping; returns the last epoch trained (0-based; start_epoch - 1 if none).
        A SIGTERM / SIGINT ends it after the current step with ``LAST_FILE`` written (``RunInterrupted``)."""
        t = self.spec.train
        epoch = self.start_epoch - 1
        for epoch in range(self.start_epoch, t.epochs):
            # the order of an epoch is fixed by (seed, epoch): a resumed run sees the same batches
            loader.sampler.set_epoch(epoch)
            loader.generator.manual_seed(t.seed + epoch)
            # resumed mid-epoch: the loader skips the windows already trained on
            progress = loader.sampler.resume_within(self.resume_progress, epoch, "windows",
                                                    settings.accum_steps * t.batch_size)
            self._schedule_augmentation(loader.sampler, epoch)
            if t.unfreeze_at_epoch and epoch == t.unfreeze_at_epoch:
                self._unfreeze_backbone()
            reset_peak(self.device)
            started = time.time()
            evaluated = epoch + 1 == t.epochs or bool(t.eval_every and (epoch + 1) % t.eval_every == 0)
            result = train_one_epoch(self.state, loader, epoch=epoch, settings=settings, run=self.run, pace=hint,
                                     histograms=evaluated, progress=progress)
            hint = None  # said once
            if result.interrupted is not None:
                path = self.save(LAST_FILE, epoch - 1, progress=result.progress)
                raise RunInterrupted(result.interrupted, path)
            self._epoch_summary(epoch, result, time.time() - started)
            self.save(LAST_FILE, epoch)  # a finished epoch is never lost
            if t.checkpoint_every and (epoch + 1) % t.checkpoint_every == 0:
                self.save(f"dino_detector_epoch_{epoch + 1}.pth", epoch)
                if self.run.is_main:
                    prune_epoch_checkpoints(self.run.out, t.keep_checkpoints)
            if result.out_of_time:
                log.info("time budget of %.1f min reached after %d steps", t.time_budget_min, self.state.step)
                break
            if t.eval_every and (epoch + 1) % t.eval_every == 0 and epoch + 1 < t.epochs:
                if self._select(self.evaluate(epoch + 1, f"epoch_{epoch + 1}"), epoch + 1):
                    break
        return epoch

    def _schedule_augmentation(self, sampler, epoch: int) -> None:
        """Strong augmentation (mosaic, crop, rotation, size changes) from epoch ``strong_aug_start_epoch`` to
        all but the last ``strong_aug_off_fraction`` of training, in epochs or in the time budget's minutes
        (whichever comes first): the first epochs learn from plain images (DEIM), the last see images as
        evaluation does (YOLO's close-mosaic)."""
        d = self.spec.data
        window = strong_augmentation_window(d.strong_aug_start_epoch, d.strong_aug_off_fraction,
                                            epochs=self.spec.train.epochs, budget_s=self.run.budget_s)
        strong = window(Clock(self.state.step, epoch, self.state.elapsed))
        if strong != sampler.strong and uses_strong_augmentation(d):  # else a switch changes nothing
            if strong:
                log.info("strong augmentation on from epoch %d", epoch + 1)
            elif epoch >= d.strong_aug_start_epoch:
                log.info("strong augmentation off from epoch %d (the last %.0f %% of training)", epoch + 1,
                         100 * d.strong_aug_off_fraction)
            else:
                log.info("strong augmentation off until epoch %d (--strong_aug_start_epoch)",
                         d.strong_aug_start_epoch + 1)
        sampler.strong = strong

    def _pace_hint(self, steps_per_epoch: int):
        """After the first steps on a CPU: what one epoch will take at the measured rate, and, unless the run
        uses it, the CPU recipe (said once; nothing the user asked for changes)."""
        recipe = self.spec.preset != "two-stage"

        def say(seconds_per_step: float) -> None:
            seconds = seconds_per_step * steps_per_epoch
            took = f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
            advice = (f". For a first try on a CPU, the recipe that learns fastest per CPU minute here is "
                      f"`{CPU_RECIPE}` (README)" if recipe else "")
            log.info("on this CPU a step takes %.1f s: one epoch of %d step%s takes about %s%s", seconds_per_step,
                     steps_per_epoch, "" if steps_per_epoch == 1 else "s", took, advice)
        return say

    def _epoch_summary(self, epoch: int, result: EpochResult, seconds: float) -> None:
        """Losses, time, throughput and memory of an epoch: console, history, TensorBoard."""
        means, images = result.means, result.images
        self.history.append({"epoch": epoch + 1, **means, **({"skipped_steps": result.skipped} if result.skipped
                                                             else {})})
        memory = memory_stats(self.device)
        logger = self.run.logger
        logger.scalars(means, epoch + 1, "epoch")
        logger.scalars({"seconds": seconds, "images_per_s": images / max(seconds, 1e-9)}, epoch + 1, "epoch_perf")
        logger.scalars(memory, epoch + 1, "epoch_memory")
        cuda = f", CUDA peak {memory['cuda_peak_mb']:.0f} MiB" if "cuda_peak_mb" in memory else ""
        skipped = f", {result.skipped} non-finite steps skipped" if result.skipped else ""
        log.info("epoch %d/%d  %s  | %.1f s, %.1f images/s, peak RSS %.0f MiB%s%s", epoch + 1,
                 self.spec.train.epochs, " ".join(f"{k} {v:.4f}" for k, v in means.items()), seconds,
                 images / max(seconds, 1e-9), memory["cpu_peak_rss_mb"], cuda, skipped)


def _log_dir(t) -> str | None:
    """TensorBoard folder: ``log_dir`` (default ``<output_dir>/tensorboard``), then ``experiment_name``."""
    from pathlib import Path
    base = Path(t.log_dir) if t.log_dir else Path(t.output_dir) / "tensorboard"
    return str(base / t.experiment_name) if t.experiment_name else str(base)
