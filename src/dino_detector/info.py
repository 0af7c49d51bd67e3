"""``python -m dino_detector.info``: offline table of backbone variants and, with ``--preset``, detector sizes.

Models are built on PyTorch's ``meta`` device: shapes only, no memory, so even the 7B backbone is counted
in a second.
"""
from __future__ import annotations

import argparse
import sys

import torch

from .backbones.dino import ARCHITECTURES, _classes, architecture_config
from .backbones.flexible import FLEXIBLE_ARCHITECTURES, FlexibleEncoder


def backbone_rows() -> list[dict]:
    rows = []
    for name, (family, _) in ARCHITECTURES.items():
        cfg = architecture_config(name)
        with torch.device("meta"):
            model = _classes(family)[1](cfg)
        rows.append({"name": name, "family": family, "hidden": cfg.hidden_size, "layers": cfg.num_hidden_layers,
                     "heads": cfg.num_attention_heads, "patch": cfg.patch_size,
                     "registers": getattr(cfg, "num_register_tokens", 0),
                     "params": sum(p.numel() for p in model.parameters())})
    for name in FLEXIBLE_ARCHITECTURES:  # our conv-stem encoder: pretrain it with dino_detector.pretrain
        with torch.device("meta"):
            model = FlexibleEncoder(name)
        cfg = model.config
        rows.append({"name": name, "family": "flexible", "hidden": cfg.hidden_size, "layers": cfg.num_hidden_layers,
                     "heads": cfg.num_attention_heads, "patch": cfg.patch_size, "registers": 0,
                     "params": sum(p.numel() for p in model.parameters())})
    return rows


def detector_counts(preset: str, num_classes: int, **overrides) -> tuple[int, int]:
    """(trainable, total) parameters of a preset's detector with random weights, built on the meta device."""
    from .backbones.adapters import count_parameters
    from .config import build_config
    from .models.detector import DINOv2ObjectDetector

    cfg = build_config(preset, **overrides)
    cfg.model.pretrained = False
    if cfg.model.backbone_mode == "auto":  # count as trained from pretrained weights: LoRA adapters
        cfg.model.backbone_mode = "lora"
    with torch.device("meta"):
        model = DINOv2ObjectDetector(num_classes=num_classes, config=cfg.model)
    return count_parameters(model)


def main(argv: list[str] | None = None) -> int:
    from .config import PRESETS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), help="also print this preset's detector size")
    parser.add_argument("--num_classes", type=int, default=80)
    parser.add_argument("--dino_model", default=None, help="backbone for --preset (default: the preset's)")
    args = parser.parse_args(argv)
    print(f"{'backbone':46s} {'family':10s} {'hidden':>6s} {'layers':>6s} {'heads':>5s} {'patch':>5s} "
          f"{'regs':>4s} {'params':>14s}")
    for r in backbone_rows():
        print(f"{r['name']:46s} {r['family']:10s} {r['hidden']:6d} {r['layers']:6d} {r['heads']:5d} "
              f"{r['patch']:5d} {r['registers']:4d} {r['params']:14,d}")
    if args.preset:
        overrides = {"dino_model": args.dino_model} if args.dino_model else {}
        trainable, total = detector_counts(args.preset, args.num_classes, **overrides)
        print(f"\npreset {args.preset} ({args.num_classes} classes): {trainable:,} trainable of {total:,} "
              f"parameters ({100 * trainable / total:.2f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
