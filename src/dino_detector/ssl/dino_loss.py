"""DINO image-level self-distillation loss with teacher centring and Sinkhorn-Knopp targets."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


from ..runtime.distributed import all_reduce_sum_ as _all_reduce_sum
from ..runtime.distributed import world_size


class DINOLoss(nn.Module):
    """Cross-entropy between teacher probabilities and student log-probabilities over crop pairs.

    ``center`` ``[1, out_dim]`` is an EMA of teacher logits; subtracting it (centring) plus a sharp
    teacher temperature is what prevents collapse to a single prototype or to the uniform output.
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def teacher_probs(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """Centred, sharpened teacher targets: ``[N, K]`` logits -> ``[N, K]`` probabilities."""
        return F.softmax((teacher_logits - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def sinkhorn_knopp(self, teacher_logits: torch.Tensor, teacher_temp: float,
                       iterations: int = 3) -> torch.Tensor:
        """Equipartitioned teacher targets (SwAV / DINOv2): ``[N, K]`` -> ``[N, K]``, rows sum to 1.

        Alternating normalisation pushes every prototype to receive the same total mass over the
        (global) batch, an alternative to centring for avoiding collapse.
        """
        logits = teacher_logits.float() / teacher_temp
        # Subtracting the global max is exact after normalisation and keeps exp() finite.
        shift = logits.max().detach().clone()
        if world_size() > 1:
            dist.all_reduce(shift, op=dist.ReduceOp.MAX)
        q = torch.exp(logits - shift).t()  # [K, N]: prototypes x samples
        n_samples = torch.tensor(float(q.shape[1]), device=q.device)
        _all_reduce_sum(n_samples)
        n_protos = q.shape[0]
        q /= _all_reduce_sum(q.sum())
        for _ in range(iterations):
            # Each prototype gets 1/K of the total mass ...
            q /= _all_reduce_sum(q.sum(dim=1, keepdim=True))
            q /= n_protos
            # ... and each sample 1/N_total.
            q /= q.sum(dim=0, keepdim=True)
            q /= n_samples
        q *= n_samples  # columns now sum to 1: one distribution per sample
        return q.t()

    def forward(self, student_logits: list[torch.Tensor], teacher_probs: list[torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy over (teacher crop i, student crop j) pairs, skipping same-view pairs.

        ``student_logits``: one ``[B, K]`` tensor per student crop (globals first, then locals).
        ``teacher_probs``: one ``[B, K]`` tensor per global crop. Returns a scalar.
        """
        # Student crop j < n_teacher is the same view as teacher crop j only when the student also
        # saw the global crops, i.e. when it has at least as many crops as the teacher.
        skip_same_view = len(student_logits) >= len(teacher_probs)
        student_logp = [F.log_softmax(s / self.student_temp, dim=-1) for s in student_logits]
        total = student_logits[0].new_zeros(())
        n_pairs = 0
        for i, p_t in enumerate(teacher_probs):
            for j, logp_s in enumerate(student_logp):
                if skip_same_view and i == j:
                    continue
                total = total + torch.sum(-p_t * logp_s, dim=-1).mean()
                n_pairs += 1
        if n_pairs == 0:
            raise ValueError("DINOLoss needs at least one (teacher, student) pair of different views")
        return total / n_pairs

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """EMA update of ``center`` with the (global) batch mean of ``teacher_logits [N, K]``."""
        batch_sum = _all_reduce_sum(teacher_logits.float().sum(dim=0, keepdim=True))
        world = world_size()
        batch_mean = batch_sum / (world * teacher_logits.shape[0])
        m = self.center_momentum
        self.center.mul_(m).add_(batch_mean.to(self.center.dtype), alpha=1 - m)
