"""Training throughput and peak memory, float32 against autocast (bf16 / fp16), on one CUDA GPU.

    .venv/bin/python benchmarks/amp_speed.py [--image_size 640] [--batch_size 8] [--steps 20] [--preset standard]

Builds the preset's architecture offline (``--no_pretrained``: the weights do not change the cost), feeds
random 640x480 images with 12 boxes each through the same training step the trainer runs (autocast forward,
float32 losses, scaled backward for fp16, clipping, AdamW), and prints images/s (after 3 warm-up steps) and
peak allocated memory per mode as a Markdown table row. CPU runs are refused: bf16 there is not a speed-up.
"""
from __future__ import annotations

import argparse
import time

import torch

from dino_detector.config import build_config
from dino_detector.engine.epoch import to_float
from dino_detector.losses.criterion import build_criterion
from dino_detector.models.detector import DINOv2ObjectDetector

MODES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
WARMUP = 3


def measure(preset: str, dtype, image_size: int, batch: int, steps: int) -> tuple[float, float]:
    device = torch.device("cuda")
    cfg = build_config(preset, pretrained=False, image_size=image_size)
    torch.manual_seed(0)
    model = DINOv2ObjectDetector(num_classes=80, config=cfg.model).to(device).train()
    criterion = build_criterion(80, cfg.loss, model.softmax).to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    h = image_size * 3 // 4
    images = [torch.rand(3, h, image_size, device=device) for _ in range(batch)]
    targets = [{"labels": torch.randint(0, 80, (12,), device=device),
                "boxes": torch.cat([torch.rand(12, 2, device=device) * 0.6 + 0.2,
                                    torch.rand(12, 2, device=device) * 0.2 + 0.05], -1)} for _ in range(batch)]
    torch.cuda.reset_peak_memory_stats(device)
    for i in range(WARMUP + steps):
        if i == WARMUP:
            torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(images)
        losses = criterion(to_float(out), targets)
        weights = criterion.weight_dict(len(out.get("aux_outputs", [])), "enc_outputs" in out)
        scaler.scale(sum(losses[k] * weights[k] for k in losses)).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return batch * steps / seconds, torch.cuda.max_memory_allocated(device) / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="standard")
    parser.add_argument("--image_size", type=int, default=640)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--modes", nargs="+", default=["fp32", "bf16"], choices=sorted(MODES))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("amp_speed.py measures a CUDA GPU; none is available here")
    print(f"| {torch.cuda.get_device_name()} | preset | px | batch | mode | images/s | peak GiB |")
    for mode in args.modes:
        ips, peak = measure(args.preset, MODES[mode], args.image_size, args.batch_size, args.steps)
        print(f"| | {args.preset} | {args.image_size} | {args.batch_size} | {mode} | {ips:.1f} | {peak:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
