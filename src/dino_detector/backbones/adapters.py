"""How the backbone trains: frozen, LoRA adapters (peft) or fully fine-tuned."""
from __future__ import annotations

import logging
import re

from torch import nn

log = logging.getLogger(__name__)
# The masked-image-modelling token of DINOv2 / DINOv3: detection never masks patches, so it never gets a
# gradient; kept frozen so DDP need not search every step for parameters without gradients.
UNUSED_IN_DETECTION = ("mask_token",)


def lora_target_regex(block_prefix: str, num_blocks: int, modules: list[str], last_n_blocks: int) -> str:
    """A peft target regex for ``modules`` inside the last ``last_n_blocks`` blocks (0: all blocks)."""
    first = 0 if last_n_blocks <= 0 else max(0, num_blocks - last_n_blocks)
    blocks = "|".join(str(i) for i in range(first, num_blocks))
    names = "|".join(modules)
    prefix = re.escape(block_prefix)
    return rf".*{prefix}\.({blocks})\..*({names})$"


def apply_backbone_mode(backbone: nn.Module, *, mode: str, rank: int, alpha: int, dropout: float,
                        target_modules: list[str], last_n_blocks: int) -> None:
    """Freeze / wrap with LoRA / leave trainable, in place on ``backbone.vit``."""
    if mode == "full":
        unfreeze(backbone)
        return
    for p in backbone.vit.parameters():
        p.requires_grad_(False)
    if mode == "frozen":
        return
    from peft import LoraConfig, inject_adapter_in_model

    regex = lora_target_regex(backbone.block_prefix(), backbone.vit.config.num_hidden_layers,
                              list(target_modules), last_n_blocks)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=regex, bias="none")
    backbone.vit = inject_adapter_in_model(config, backbone.vit)


def unfreeze(backbone: nn.Module) -> list[nn.Parameter]:
    """Make every backbone weight trainable except those detection never uses; returns them."""
    params = []
    for name, p in backbone.named_parameters():
        p.requires_grad_(not name.endswith(UNUSED_IN_DETECTION))
        if p.requires_grad:
            params.append(p)
    return params


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def merge_lora_(model: nn.Module) -> int:
    """Fold every LoRA adapter into its base weight, in place (for inference and export: one matmul per
    layer instead of three). Returns the number of merged layers."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return 0
    merged = 0
    for module in model.modules():
        if isinstance(module, LoraLayer) and not module.merged:
            module.merge()
            merged += 1
    return merged
