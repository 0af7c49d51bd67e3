"""Optimizer parameter groups and the learning-rate schedule.

Groups are named (``head``, ``backbone`` or, with layer-wise decay, ``backbone.layer{i}``) and carry their
undecayed rate as ``base_lr``; the schedule multiplies every group's ``base_lr`` by one factor per step.
Layer-wise decay (``layer_decay`` < 1, as in BEiT / DINOv2 fine-tuning): a tuned backbone's block i of L
trains at ``lr_backbone * layer_decay ** (L + 1 - id)``, where the patch embedding has id 0, block i has
id i + 1 and the final norm id L + 1, so early, general features move least.
"""
from __future__ import annotations

import math
import re

import torch
from torch import nn

SCHEDULES = ("step", "cosine")
_BLOCK_INDEX = re.compile(r"\.layers?\.(\d+)\.")  # DINOv2: encoder.layer.N, DINOv3: model.layer.N


def backbone_layer_id(name: str, num_layers: int) -> int:
    if ".embeddings." in name:
        return 0
    m = _BLOCK_INDEX.search(name)
    return int(m.group(1)) + 1 if m else num_layers + 1


def backbone_groups(model: nn.Module, lr: float, layer_decay: float) -> list[dict]:
    """Trainable backbone parameters: one group, or one per depth with layer-wise decay."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone.")]
    if not named:
        return []
    if layer_decay >= 1.0:
        return [{"name": "backbone", "params": [p for _, p in named], "base_lr": lr}]
    num_layers = model.backbone.vit.config.num_hidden_layers
    by_layer: dict[int, list] = {}
    for n, p in named:
        by_layer.setdefault(backbone_layer_id(n, num_layers), []).append(p)
    return [{"name": f"backbone.layer{i}", "params": ps, "base_lr": lr * layer_decay ** (num_layers + 1 - i)}
            for i, ps in sorted(by_layer.items())]


def head_group(model: nn.Module, lr: float) -> list[dict]:
    params = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("backbone.")]
    return [{"name": "head", "params": params, "base_lr": lr}] if params else []


def build_optimizer(model: nn.Module, lr: float, backbone_lr: float, layer_decay: float,
                    weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the head and backbone groups. The fused kernel updates every tensor in one pass: on CPU a
    DINOv2-S step's update is several times faster than the per-tensor loop."""
    groups = head_group(model, lr) + backbone_groups(model, backbone_lr, layer_decay)
    device = next(model.parameters()).device.type
    fused = device in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=fused)


class LRSchedule:
    """Linear warm-up over ``warmup_steps`` optimizer steps, then either
    - ``step``: ``base_lr`` until the drop (``drop_epoch``, or 0: after ``fraction`` of the epochs or of
      the time budget, whichever comes first), then ``base_lr * drop_factor``; or
    - ``cosine``: from ``base_lr`` down to ``base_lr * min_factor`` over the run (its steps, or its time
      budget when that ends sooner).
    """

    def __init__(self, kind: str, epochs: int, steps_per_epoch: int, warmup_steps: int = 0,
                 drop_epoch: int = 0, drop_factor: float = 0.1, fraction: float = 0.67, budget_s: float = 0.0,
                 min_factor: float = 0.01):
        if kind not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got '{kind}'")
        self.kind, self.warmup_steps, self.min_factor = kind, warmup_steps, min_factor
        self.total_steps = max(1, epochs * steps_per_epoch)
        self.drop_factor, self.budget_s, self.fraction = drop_factor, budget_s, fraction
        self.drop_epoch = drop_epoch if drop_epoch > 0 else max(1, math.ceil(epochs * fraction))

    def progress(self, step: int, elapsed_s: float) -> float:
        done = step / self.total_steps
        if self.budget_s > 0:
            done = max(done, elapsed_s / self.budget_s)
        return min(1.0, done)

    def factor(self, step: int, epoch: int, elapsed_s: float) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        if self.kind == "cosine":
            cos = 0.5 * (1 + math.cos(math.pi * self.progress(step, elapsed_s)))
            return warm * (self.min_factor + (1 - self.min_factor) * cos)
        dropped = epoch >= self.drop_epoch or (self.budget_s > 0 and elapsed_s >= self.budget_s * self.fraction)
        return warm * (self.drop_factor if dropped else 1.0)

    def apply(self, optimizer, step: int, epoch: int, elapsed_s: float) -> dict[str, float]:
        """Sets every group's lr; returns {group name: lr}."""
        f = self.factor(step, epoch, elapsed_s)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * f
        return {g["name"]: g["lr"] for g in optimizer.param_groups}
