"""Training-step cost of architecture variants on CPU: forward + set loss + backward + AdamW step.

    .venv/bin/python benchmarks/step_time.py [VARIANT ...]     # run nothing else meanwhile

Batch of 8 random 384x288 images (BCCD-sized) with 12 boxes each, ``tiny`` backbone, 100 queries, 6 decoder
layers; prints the fastest of 3 steps after one warm-up step.
"""
from __future__ import annotations

import sys
import time

import torch

from dino_detector.config import LossConfig, ModelConfig
from dino_detector.losses.criterion import build_criterion
from dino_detector.models.detector import DINOv2ObjectDetector

MULTI = dict(num_feature_levels=4, backbone_feature_layers=3, decoder_shared_values=True)
VARIANTS = {
    "single_scale": dict(num_feature_levels=1, encoder_layers=1),
    "multi_scale": dict(MULTI, encoder_layers=0),
    "multi_scale_encoder_two_stage": dict(MULTI, encoder_layers=1, two_stage=True),
    "multi_scale_own_value_projections": dict(MULTI, encoder_layers=0, decoder_shared_values=False),
    "multi_scale_encode_upsampled_level": dict(MULTI, encoder_layers=1, encode_upsampled_level=True),
}


def step_seconds(overrides: dict, steps: int = 3) -> float:
    torch.manual_seed(0)
    images = [torch.rand(3, 288, 384) for _ in range(8)]
    targets = [{"labels": torch.randint(0, 3, (12,)),
                "boxes": torch.cat([torch.rand(12, 2) * 0.6 + 0.2, torch.rand(12, 2) * 0.1 + 0.05], -1)}
               for _ in range(8)]
    model = DINOv2ObjectDetector(num_classes=3, config=ModelConfig(dino_model="tiny", pretrained=False, **overrides))
    criterion = build_criterion(3, LossConfig())
    optimizer = torch.optim.AdamW(model.parameters(), 1e-4)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        out = model(images)
        losses = criterion(out, targets)
        weights = criterion.weight_dict(len(out["aux_outputs"]), "enc_outputs" in out)
        sum(losses[k] * weights[k] for k in losses).backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    return min(times[1:])


if __name__ == "__main__":
    for name in sys.argv[1:] or list(VARIANTS):
        print(f"{name:36s} {step_seconds(VARIANTS[name]):.2f} s/step", flush=True)
