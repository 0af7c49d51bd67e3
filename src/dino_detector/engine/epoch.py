"""One training epoch: accumulation windows, DDP gradient sync, autocast + gradient scaling, clipping, EMA,
scheduled learning rates, TensorBoard points and the progress bar.

Normalisation that makes split batches exact: before a window of ``grad_accum_steps`` batches, the boxes
and images of the whole window on every process are counted; each batch's loss is divided by those totals
(divided by the number of processes, since DDP averages gradients). Summing the window's gradients, and
averaging over processes, then gives the gradient of one batch of all those images.
"""
from __future__ import annotations

import itertools
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import torch
from torchvision.ops import box_convert
from tqdm import tqdm

from ..models.postprocess import postprocess
from ..runtime.distributed import sum_across_processes
from ..runtime.memory import memory_stats
from ..runtime.schedule import Clock, Schedule
from .guard import StepGuard, gradient_norm
from .optim import apply_lr
from .run import RunContext

IMAGE_LOG_THRESHOLD = 0.3  # predicted boxes drawn in logged images: score at least this (top 20)
PACE_STEPS = 3  # ``pace`` is told the time per step after this many steps (the first ones include warm-up)


def windows(loader, size: int):
    """Consecutive groups of ``size`` batches (the last may be shorter)."""
    it = iter(loader)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def to_float(x):
    """Autocast outputs back to float32 before the losses (matching and focal terms need the range)."""
    if torch.is_tensor(x):
        return x.float() if x.is_floating_point() else x
    if isinstance(x, dict):
        return {k: to_float(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_float(v) for v in x)
    return x


def to_device(images, targets, device):
    images = [im.to(device, non_blocking=True) for im in images]
    targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in tg.items()} for tg in targets]
    return images, targets


@dataclass
class TrainState:
    """What an epoch reads and advances: the model (and the module the step calls: it, or its DDP wrapper),
    the criterion, optimizer, gradient scaler, EMA, lr schedule, and the step / training-time counters."""
    model: torch.nn.Module
    module: torch.nn.Module
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: torch.nn.Module | None
    schedule: Schedule | None = None  # set when the run knows its steps per epoch
    guard: StepGuard = field(default_factory=lambda: StepGuard(5))  # skips and counts non-finite steps
    step: int = 0
    elapsed: float = 0.0  # seconds of training so far (resumed runs included; evaluation excluded)


@dataclass(frozen=True)
class StepSettings:
    """The training section's values an epoch uses."""
    epochs: int
    accum_steps: int = 1
    grad_clip: float = 0.0
    amp_dtype: torch.dtype | None = None
    log_frequency: int = 10
    log_images_frequency: int = 0  # 0: no training images in TensorBoard

    @classmethod
    def of(cls, train, amp_dtype: torch.dtype | None) -> "StepSettings":
        return cls(epochs=train.epochs, accum_steps=max(1, train.grad_accum_steps), grad_clip=train.grad_clip,
                   amp_dtype=amp_dtype, log_frequency=train.log_frequency,
                   log_images_frequency=train.log_images_frequency if train.log_images else 0)


@dataclass
class EpochResult:
    means: dict  # mean total and final-layer losses over the epoch's (not skipped) steps
    out_of_time: bool  # stopped by the time budget
    images: int  # images seen by all processes
    skipped: int = 0  # steps skipped for a non-finite loss or gradient
    interrupted: int | None = None  # the signal (SIGTERM / SIGINT) that stopped the epoch after a step
    progress: dict | None = None  # where an interrupted epoch stopped: resume continues from there


def new_progress(epoch: int) -> dict:
    """An epoch's running totals, saved in a checkpoint written mid-epoch so that a resumed run ends with the
    same epoch means: windows done (the resumed loader skips them), summed losses, steps, images, skips."""
    return {"epoch": epoch, "windows": 0, "sums": {}, "steps": 0, "images": 0, "skipped": 0}


def train_one_epoch(state: TrainState, loader, *, epoch: int, settings: StepSettings, run: RunContext,
                    pace: Callable[[float], None] | None = None, histograms: bool = True,
                    progress: dict | None = None) -> EpochResult:
    """One pass over ``loader``, advancing ``state``; stops early (every process at the same step) when the
    run's time budget is spent or a SIGTERM / SIGINT arrived (after finishing the step it is in).
    ``pace(seconds per step)`` is called once, after PACE_STEPS steps. ``histograms``: write the parameter /
    gradient histograms of the epoch's last step (costly: a tiny model's take as long as its training step,
    so the trainer asks for them on evaluated epochs only). ``progress``: the totals of the part of this
    epoch a resumed run already trained (its loader skips those windows)."""
    device, world, accum = run.device, run.dist.world_size, settings.accum_steps
    state.module.train()
    progress = dict(progress or new_progress(epoch), sums=dict((progress or {}).get("sums", {})))
    sums: dict[str, float] = progress["sums"]
    n, images_seen, skipped = progress["steps"], progress["images"], progress["skipped"]
    out_of_time, interrupted = False, None
    started = time.time()
    total = math.ceil(len(loader) / accum)
    bar = tqdm(windows(loader, accum), total=total, desc=f"epoch {epoch + 1}/{settings.epochs}", leave=False,
               dynamic_ncols=True, disable=not run.is_main)
    state.optimizer.zero_grad(set_to_none=True)
    step_started = started
    for w, window in enumerate(bar):
        lrs = apply_lr(state.optimizer, state.schedule, Clock(state.step, epoch, state.elapsed + time.time() - started))
        boxes, images = sum_across_processes([sum(len(tg["labels"]) for _, tgs in window for tg in tgs),
                                              sum(len(ims) for ims, _ in window)], device)
        step_losses: dict[str, torch.Tensor] = {}
        for j, (images_j, targets_j) in enumerate(window):
            images_j, targets_j = to_device(images_j, targets_j, device)
            sync = j == len(window) - 1 or world == 1
            with nullcontext() if sync else state.module.no_sync():
                with torch.autocast(device.type, dtype=settings.amp_dtype or torch.float32,
                                    enabled=settings.amp_dtype is not None):
                    outputs = state.module(images_j, targets_j)  # targets: for denoising queries
                outputs = to_float(outputs)
                losses = state.criterion(outputs, targets_j, boxes / world, images / world)
                loss = state.criterion.total(losses, outputs)
                state.scaler.scale(loss).backward()
            for k, v in [*losses.items(), ("loss", loss)]:
                step_losses[k] = step_losses.get(k, 0.0) + v.detach()
        keys = sorted(step_losses)
        values = sum_across_processes([float(step_losses[k]) for k in keys], device)
        main = {k: v / world for k, v in zip(keys, values)}  # the loss of the whole step, all processes
        finite = all(math.isfinite(v) for v in main.values())
        grad_norm = None  # checked without fp16 scaling: the scaler skips inf-gradient steps on its own
        if finite and settings.grad_clip > 0:
            state.scaler.unscale_(state.optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(state.model.parameters(), settings.grad_clip))
        elif finite and not state.scaler.is_enabled():
            grad_norm = gradient_norm(state.model.parameters())
        if state.guard.skip(main, None if state.scaler.is_enabled() else grad_norm, step=state.step, epoch=epoch):
            skipped += 1
            run.logger.scalars({"skipped_steps": state.guard.total}, state.step, "train")
        else:
            state.scaler.step(state.optimizer)
            state.scaler.update()
            if state.ema is not None:
                state.ema.update_parameters(state.model)
            if histograms and w == total - 1:
                run.logger.histograms(state.model, state.step)  # the epoch's last step's gradients, before clearing
            for k, v in main.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
        state.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        images_seen += int(images)
        progress["windows"] += 1
        head_lr = lrs.get("head", next(iter(lrs.values())))
        bar.set_postfix(loss=f"{main['loss']:.3f}", lr=f"{head_lr:.1e}")
        if state.step % settings.log_frequency == 0:
            run.logger.scalars(main, state.step, "train")
            run.logger.scalars(lrs, state.step, "lr")
            run.logger.scalars(memory_stats(device), state.step, "memory")
            run.logger.scalars({"images_per_s": images / max(time.time() - step_started, 1e-9)}, state.step, "perf")
        step_started = time.time()  # the next step's time includes loading its batches
        if pace is not None and w + 1 == min(PACE_STEPS, total):
            pace((step_started - started) / (w + 1))
        if settings.log_images_frequency and state.step % settings.log_images_frequency == 0:
            log_training_image(run, state, images_j[0], targets_j[0], outputs)
        stop = run.should_stop(state.elapsed + time.time() - started)  # the same answer on every process
        if stop:
            out_of_time, interrupted = stop.out_of_time, stop.signum
            break
    state.elapsed += time.time() - started
    # epoch means of the total and the final layer's terms (auxiliary ones are in TensorBoard)
    kept = {"loss": sums.get("loss", 0.0), **state.criterion.final_losses(sums)}
    means = {k: kept[k] / max(n, 1) for k in sorted(kept)}
    progress.update(steps=n, images=images_seen, skipped=skipped)
    return EpochResult(means, out_of_time, images_seen, skipped, interrupted,
                       progress if interrupted is not None else None)


def log_training_image(run: RunContext, state: TrainState, image: torch.Tensor, target: dict, outputs: dict) -> None:
    """The batch's first image with its true boxes (green) and the current predictions (red)."""
    h, w = image.shape[-2:]
    first = {"pred_logits": outputs["pred_logits"][:1].detach(), "pred_boxes": outputs["pred_boxes"][:1].detach()}
    det = postprocess(first, [(h, w)], top_k=20, threshold=IMAGE_LOG_THRESHOLD,
                      **state.model.decode_options)[0]
    true = box_convert(target["boxes"], "cxcywh", "xyxy") * torch.tensor([w, h, w, h], device=image.device)
    run.logger.image("images/train", image, true, det["boxes"], state.step)
