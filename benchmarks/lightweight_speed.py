"""CPU speed of the ``lightweight`` preset (DINOv2-S/14 architecture, random weights) at 512 x 512:
matmul peak of this machine, inference latency (batch 1; LoRA adapters vs merged, optionally compiled),
model FLOPs and achieved GFLOP/s, and training throughput (batch 4, AdamW, the training criterion).

    .venv/bin/python benchmarks/lightweight_speed.py [--compile] [--repeats 8]
"""
from __future__ import annotations

import argparse
import copy
import resource
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from dino_detector.backbones.adapters import merge_lora_
from dino_detector.config import build_config
from dino_detector.losses.criterion import build_criterion
from dino_detector.models.detector import DINOv2ObjectDetector

SIDE, TRAIN_BATCH = 512, 4


def median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def matmul_peak(n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / median_seconds(lambda: a @ b, 5) / 1e9


def model(backbone_mode: str) -> DINOv2ObjectDetector:
    torch.manual_seed(0)
    cfg = build_config("lightweight", pretrained=False, backbone_mode=backbone_mode)
    return DINOv2ObjectDetector(num_classes=3, config=cfg.model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow first call)")
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; matmul peak {matmul_peak():.0f} GFLOP/s")

    image = [torch.rand(3, SIDE, SIDE)]
    lora = model("lora").eval()
    with FlopCounterMode(display=False) as flops:
        lora(image)
    gflop = flops.get_total_flops() / 1e9
    with torch.inference_mode():
        adapters = median_seconds(lambda: lora(image), args.repeats)
        merged_model = copy.deepcopy(lora)
        merge_lora_(merged_model)
        merged = median_seconds(lambda: merged_model(image), args.repeats)
    print(f"inference {SIDE}x{SIDE} batch 1: {gflop:.1f} GFLOP; LoRA adapters {adapters * 1e3:.0f} ms, merged "
          f"{merged * 1e3:.0f} ms ({gflop / merged:.0f} GFLOP/s)")
    if args.compile:
        merged_model.forward = torch.compile(merged_model.forward, dynamic=True)
        start = time.perf_counter()
        with torch.inference_mode():
            merged_model(image)
            first = time.perf_counter() - start
            compiled = median_seconds(lambda: merged_model(image), args.repeats)
        print(f"torch.compile: first call {first:.0f} s, then {compiled * 1e3:.0f} ms")

    net = model("full").train()  # --no_pretrained trains the whole backbone
    criterion = build_criterion(3, build_config("lightweight").loss, net.softmax)
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    images = torch.rand(TRAIN_BATCH, 3, SIDE, SIDE)
    boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.1, 0.2], [0.5, 0.2, 0.3, 0.1]])
    targets = [{"labels": torch.tensor([0, 1, 2]), "boxes": boxes} for _ in range(TRAIN_BATCH)]

    def step():
        outputs = net(images)
        loss = criterion.total(criterion(outputs, targets), outputs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    seconds = median_seconds(step, max(3, args.repeats // 2), warmup=1)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"training {SIDE}x{SIDE} batch {TRAIN_BATCH} (full backbone): {seconds:.2f} s/step, "
          f"{TRAIN_BATCH / seconds:.2f} images/s, peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main()
