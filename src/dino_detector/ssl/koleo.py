"""KoLeo regulariser (Kozachenko-Leonenko entropy estimator): spreads features over the sphere."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KoLeoLoss(nn.Module):
    """``forward(x [N, D]) -> scalar``: ``-mean(log(nearest-neighbour distance))`` of normalised rows.

    Maximising the log distance to the nearest other sample is a differentiable estimate of the
    entropy of the feature distribution, so it discourages clusters of near-duplicate embeddings.
    """

    def __init__(self, norm_eps: float = 1e-8) -> None:
        super().__init__()
        self.norm_eps = norm_eps

    def forward(self, x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        if x.dim() != 2 or x.shape[0] < 2:
            raise ValueError(f"KoLeoLoss expects [N>=2, D], got {tuple(x.shape)}")
        x = F.normalize(x, dim=-1, eps=self.norm_eps)
        with torch.no_grad():
            # On unit vectors the nearest neighbour has the largest dot product; -1 on the diagonal
            # (the smallest possible cosine) makes a row never pick itself.
            dots = x @ x.t()
            dots.fill_diagonal_(-1.0)
            nearest = dots.argmax(dim=1)  # [N]
        # Distances are recomputed with gradients; only the neighbour *choice* is non-differentiable.
        distances = F.pairwise_distance(x, x[nearest], p=2)
        return -torch.log(distances + eps).mean()
