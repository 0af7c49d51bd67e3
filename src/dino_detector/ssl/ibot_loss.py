"""iBOT masked-patch self-distillation loss: the student predicts the teacher's patch tokens."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime.distributed import all_reduce_sum_ as _all_reduce_sum
from .masking import masked_token_mean


class IBOTPatchLoss(nn.Module):
    """Patch-level analogue of :class:`DINOLoss`, evaluated only at masked student positions.

    ``center`` ``[1, 1, out_dim]`` is an EMA of the teacher's masked-token logits.
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, 1, out_dim))

    @torch.no_grad()
    def teacher_probs(self, teacher_patch_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """Centred, sharpened targets: ``[B, T, K]`` logits -> ``[B, T, K]`` probabilities."""
        return F.softmax((teacher_patch_logits - self.center) / teacher_temp, dim=-1)

    def forward(self, student_patch_logits: torch.Tensor, teacher_probs: torch.Tensor,
                masks: torch.Tensor) -> torch.Tensor:
        """Scalar loss from ``student_patch_logits [B, T, K]``, ``teacher_probs [B, T, K]``, ``masks [B, T]``.

        Per-token cross-entropy at masked positions, averaged per image over its masked tokens (so
        heavily masked images do not dominate), then over images having at least one masked token.
        """
        logp = F.log_softmax(student_patch_logits / self.student_temp, dim=-1)
        return masked_token_mean(torch.sum(-teacher_probs * logp, dim=-1), masks)

    @torch.no_grad()
    def update_center(self, teacher_patch_logits: torch.Tensor, masks: torch.Tensor) -> None:
        """EMA update of ``center`` with the mean teacher logit over masked tokens (all ranks)."""
        masks = masks.bool()
        k = teacher_patch_logits.shape[-1]
        masked = teacher_patch_logits.float()[masks]  # [M, K]
        stats = torch.cat([masked.sum(dim=0), masked.new_tensor([float(masked.shape[0])])])
        _all_reduce_sum(stats)
        count = stats[k]
        if count <= 0:
            return  # nothing masked anywhere: keep the previous centre
        mean = (stats[:k] / count).view(1, 1, k)
        m = self.center_momentum
        self.center.mul_(m).add_(mean.to(self.center.dtype), alpha=1 - m)
