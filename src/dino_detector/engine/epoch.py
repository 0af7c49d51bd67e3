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

import torch
from torchvision.ops import box_convert
from tqdm import tqdm

from ..models.postprocess import postprocess
from .distributed import sum_across_processes
from .memory import memory_stats

IMAGE_LOG_THRESHOLD = 0.3  # predicted boxes drawn in logged images: score at least this (top 20)


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


def train_one_epoch(tr, loader, epoch: int, deadline: float | None) -> tuple[dict, bool, int]:
    """One pass over ``loader`` for Trainer ``tr``. Returns (mean losses, stopped by the time budget,
    images seen by all processes)."""
    t, dist_info, device = tr.cfg.train, tr.dist, tr.device
    accum, world = max(1, t.grad_accum_steps), dist_info.world_size
    tr.ddp.train()
    sums: dict[str, float] = {}
    n = images_seen = 0
    out_of_time = False
    started = time.time()
    total = math.ceil(len(loader) / accum)
    bar = tqdm(windows(loader, accum), total=total, desc=f"epoch {epoch + 1}/{t.epochs}", leave=False,
               dynamic_ncols=True, disable=not dist_info.is_main)
    tr.optimizer.zero_grad(set_to_none=True)
    step_started = started
    for w, window in enumerate(bar):
        lrs = tr.schedule.apply(tr.optimizer, tr.step, epoch, tr.elapsed + time.time() - started)
        boxes, images = sum_across_processes([sum(len(tg["labels"]) for _, tgs in window for tg in tgs),
                                              sum(len(ims) for ims, _ in window)], device)
        step_losses: dict[str, torch.Tensor] = {}
        for j, (images_j, targets_j) in enumerate(window):
            images_j, targets_j = to_device(images_j, targets_j, device)
            sync = j == len(window) - 1 or world == 1
            with nullcontext() if sync else tr.ddp.no_sync():
                with torch.autocast(device.type, dtype=tr.amp_dtype or torch.float32, enabled=t.amp):
                    outputs = tr.ddp(images_j, targets_j)  # targets: for denoising queries
                outputs = to_float(outputs)
                losses = tr.criterion(outputs, targets_j, boxes / world, images / world)
                loss = tr.criterion.total(losses, outputs)
                tr.scaler.scale(loss).backward()
            for k, v in [*losses.items(), ("loss", loss)]:
                step_losses[k] = step_losses.get(k, 0.0) + v.detach()
        keys = sorted(step_losses)
        values = sum_across_processes([float(step_losses[k]) for k in keys], device)
        main = {k: v / world for k, v in zip(keys, values)}  # the loss of the whole step, all processes
        if not math.isfinite(main["loss"]):
            raise FloatingPointError(f"loss is {main['loss']} at epoch {epoch + 1}, step {tr.step}: "
                                     f"{ {k: round(v, 4) for k, v in main.items() if k.count('_') == 1} }")
        if t.grad_clip > 0:
            tr.scaler.unscale_(tr.optimizer)
            torch.nn.utils.clip_grad_norm_(tr.model.parameters(), t.grad_clip)
        tr.scaler.step(tr.optimizer)
        tr.scaler.update()
        if tr.ema is not None:
            tr.ema.update_parameters(tr.model)
        if w == total - 1:
            tr.logger.histograms(tr.model, tr.step)  # gradients of the epoch's last step, before clearing
        tr.optimizer.zero_grad(set_to_none=True)
        tr.step += 1
        images_seen += int(images)
        for k, v in main.items():
            sums[k] = sums.get(k, 0.0) + v
        n += 1
        head_lr = lrs.get("head", next(iter(lrs.values())))
        bar.set_postfix(loss=f"{main['loss']:.3f}", lr=f"{head_lr:.1e}")
        if tr.step % t.log_frequency == 0:
            tr.logger.scalars(main, tr.step, "train")
            tr.logger.scalars(lrs, tr.step, "lr")
            tr.logger.scalars(memory_stats(device), tr.step, "memory")
            tr.logger.scalars({"images_per_s": images / max(time.time() - step_started, 1e-9)}, tr.step, "perf")
        step_started = time.time()  # the next step's time includes loading its batches
        if t.log_images and tr.step % t.log_images_frequency == 0:
            log_training_image(tr, images_j[0], targets_j[0], outputs)
        if deadline is not None and sum_across_processes([float(time.time() >= deadline)], device)[0] > 0:
            out_of_time = True  # every process stops at the same step
            break
    tr.elapsed += time.time() - started
    # epoch means of the total and the final layer's terms (auxiliary ones are in TensorBoard)
    return {k: v / max(n, 1) for k, v in sums.items() if k.count("_") <= 1}, out_of_time, images_seen


def log_training_image(tr, image: torch.Tensor, target: dict, outputs: dict) -> None:
    """The batch's first image with its true boxes (green) and the current predictions (red)."""
    h, w = image.shape[-2:]
    first = {"pred_logits": outputs["pred_logits"][:1].detach(), "pred_boxes": outputs["pred_boxes"][:1].detach()}
    det = postprocess(first, [(h, w)], top_k=20, threshold=IMAGE_LOG_THRESHOLD, softmax=tr.model.softmax)[0]
    true = box_convert(target["boxes"], "cxcywh", "xyxy") * torch.tensor([w, h, w, h], device=image.device)
    tr.logger.image("images/train", image, true, det["boxes"], tr.step)
