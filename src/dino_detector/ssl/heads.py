"""Projection head shared by the DINO (image-level) and iBOT (patch-level) objectives."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm


class DINOHead(nn.Module):
    """MLP -> bottleneck -> L2 normalisation -> weight-normalised prototype layer.

    Input ``x`` is ``[N, in_dim]`` or ``[B, T, in_dim]`` (every layer acts on the last dim);
    the output has the same leading shape with ``out_dim`` logits (one per prototype).
    """

    def __init__(self, in_dim: int, out_dim: int = 4096, hidden_dim: int = 1024,
                 bottleneck_dim: int = 256, nlayers: int = 3, init_std: float = 0.02,
                 norm_eps: float = 1e-6, batch_center: bool = False) -> None:
        super().__init__()
        self.batch_center = batch_center
        if nlayers < 1:
            raise ValueError(f"nlayers must be >= 1, got {nlayers}")
        self.norm_eps = norm_eps
        layers: list[nn.Module] = []
        if nlayers == 1:
            layers.append(nn.Linear(in_dim, bottleneck_dim))
        else:
            layers += [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=init_std)
                nn.init.zeros_(module.bias)
        # Prototypes are compared by direction only: weight norm with a frozen unit magnitude turns the
        # last layer into cosine similarities, which keeps the logit scale controlled by the temperatures.
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        magnitude.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., in_dim]`` -> logits ``[..., out_dim]``. ``batch_center``: the bottleneck's mean over the
        batch (every leading position) is subtracted before the L2 normalisation, a BatchNorm without scale
        or running statistics (the head is used in pretraining only): what the samples share then no longer
        decides the direction every sample points in."""
        z = self.mlp(x)
        if self.batch_center:
            z = z - z.reshape(-1, z.shape[-1]).mean(0)
        z = F.normalize(z, dim=-1, eps=self.norm_eps)
        return self.last_layer(z)
