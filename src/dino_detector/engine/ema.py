"""Exponential moving average of the weights (``--ema``), on torch's own ``AveragedModel``.

The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` after n updates, so early averages are not
dominated by the random initial weights; buffers are averaged too (``use_buffers``).
"""
from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel


def ema_model(model: torch.nn.Module, decay: float) -> AveragedModel:
    if not 0.0 < decay < 1.0:
        raise ValueError(f"ema_decay must be in (0, 1), got {decay}")

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        d = min(decay, (1 + n) / (10 + n))
        floats = [(a, c) for a, c in zip(averaged, current) if a.is_floating_point()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], 1.0 - d)
        for a, c in zip(averaged, current):
            if not a.is_floating_point():
                a.copy_(c)

    ema = AveragedModel(model, multi_avg_fn=update, use_buffers=True)
    ema.eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema
