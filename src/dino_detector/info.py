"""``python -m dino_detector.info``: offline table of backbone variants and, with ``--preset``, detector sizes.

Models are built on PyTorch's ``meta`` device: shapes only, no memory, so even the 7B backbone is counted
in a second.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal, Optional

from .cli import parse_settings
from .config import PRESETS, Settings

PRESET_NAMES = tuple(sorted(PRESETS))


@dataclass(frozen=True)
class InfoSettings(Settings):
    preset: Optional[Literal[PRESET_NAMES]] = None  # also print this preset's detector size
    num_classes: int = 80  # classes of that detector
    dino_model: Optional[str] = None  # backbone for --preset (default: the preset's)


def backbone_rows() -> list[dict]:
    import torch

    from .backbones.catalog import ARCHITECTURES, FLEXIBLE_ARCHITECTURES
    from .backbones.flexible import FlexibleEncoder
    from .backbones.vit import _classes, architecture_config

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
    """(trainable, total) parameters of a preset's detector as it trains from its published weights (LoRA
    where they exist), built with random weights on the meta device."""
    import torch

    from .backbones.adapters import count_parameters
    from .backbones.resolve import resolve_backbone_mode, weights_source
    from .config import build_config
    from .models.detector import ObjectDetector

    model_cfg = build_config(preset, **overrides).model
    mode = resolve_backbone_mode(model_cfg.backbone_mode, weights_source(model_cfg.dino_model, pretrained=True))
    with torch.device("meta"):
        model = ObjectDetector(num_classes=num_classes, config=model_cfg.update({"pretrained": False,
                                                                                 "backbone_mode": mode}))
    return count_parameters(model)


def main(argv: list[str] | None = None) -> int:
    args, _ = parse_settings(InfoSettings, argv, description=__doc__.splitlines()[0])
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
