"""VICReg regulariser: invariance + variance + covariance terms on paired embeddings."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _variance_term(z: torch.Tensor, eps: float) -> torch.Tensor:
    """Hinge on the per-dimension std of ``z [N, D]``: penalises dimensions collapsing below std 1."""
    std = torch.sqrt(z.var(dim=0) + eps)
    return F.relu(1.0 - std).mean()


def _covariance_term(z: torch.Tensor) -> torch.Tensor:
    """Sum of squared off-diagonal covariances of ``z [N, D]`` over D: decorrelates dimensions."""
    n, d = z.shape
    zc = z - z.mean(dim=0, keepdim=True)
    cov = zc.t() @ zc / (n - 1)
    off_diag = cov - torch.diag(torch.diagonal(cov))
    return off_diag.pow(2).sum() / d


def vicreg_terms(z1: torch.Tensor, z2: torch.Tensor, eps: float = 1e-4) -> dict[str, torch.Tensor]:
    """Unweighted VICReg terms for two views ``z1, z2 [N, D]`` (N >= 2); each value is a scalar.

    The variance term is maximal (``1 - sqrt(eps)``) when all embeddings are equal, ~0 at unit std.
    """
    if z1.shape != z2.shape or z1.dim() != 2 or z1.shape[0] < 2:
        raise ValueError(f"expected two [N>=2, D] tensors of equal shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    return {
        "invariance": F.mse_loss(z1, z2),
        "variance": 0.5 * (_variance_term(z1, eps) + _variance_term(z2, eps)),
        "covariance": 0.5 * (_covariance_term(z1) + _covariance_term(z2)),
    }


class VICRegLoss(nn.Module):
    """Weighted VICReg loss; ``forward(z1 [N, D], z2 [N, D]) -> (scalar total, terms dict)``."""

    def __init__(self, invariance_weight: float = 25.0, variance_weight: float = 25.0,
                 covariance_weight: float = 1.0, eps: float = 1e-4) -> None:
        super().__init__()
        self.weights = {"invariance": invariance_weight, "variance": variance_weight,
                        "covariance": covariance_weight}
        self.eps = eps

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms = vicreg_terms(z1, z2, eps=self.eps)
        total = sum(self.weights[name] * value for name, value in terms.items())
        return total, terms
