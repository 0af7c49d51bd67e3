"""Projection head shared by the DINO (image-level) and iBOT (patch-level) objectives."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

HEAD_NORMS = ("none", "center", "batch")


class BatchStandardise(nn.Module):
    """Each feature standardised over the batch (every leading position): a BatchNorm without affine
    parameters or running statistics, so that teacher (in eval mode) and student normalise alike.
    ``x [..., D]`` -> same shape."""

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = F.batch_norm(x.reshape(-1, x.shape[-1]), None, None, training=True, eps=self.eps)
        return flat.reshape(x.shape)


class DINOHead(nn.Module):
    """MLP -> bottleneck -> L2 normalisation -> weight-normalised prototype layer.

    Input ``x`` is ``[N, in_dim]`` or ``[B, T, in_dim]`` (every layer acts on the last dim);
    the output has the same leading shape with ``out_dim`` logits (one per prototype).

    ``norm`` decides what the samples of a batch share:
    - ``"none"``: nothing is removed (DINO's ViT head);
    - ``"center"``: the bottleneck's batch mean is subtracted before the L2 normalisation;
    - ``"batch"``: every hidden layer is standardised over the batch before its GELU (DINO's
      ``use_bn_in_head``): the head then cannot map different images to one output, whatever they share.
    """

    def __init__(self, in_dim: int, out_dim: int = 4096, hidden_dim: int = 1024,
                 bottleneck_dim: int = 256, nlayers: int = 3, init_std: float = 0.02,
                 norm_eps: float = 1e-6, norm: str = "none") -> None:
        super().__init__()
        if norm not in HEAD_NORMS:
            raise ValueError(f"head norm must be one of {HEAD_NORMS}, got {norm!r}")
        if nlayers < 1:
            raise ValueError(f"nlayers must be >= 1, got {nlayers}")
        self.norm = norm
        self.norm_eps = norm_eps
        def hidden(width_in: int) -> list[nn.Module]:
            standardise = [BatchStandardise()] if norm == "batch" else []
            return [nn.Linear(width_in, hidden_dim), *standardise, nn.GELU()]

        layers: list[nn.Module] = []
        if nlayers == 1:
            layers.append(nn.Linear(in_dim, bottleneck_dim))
        else:
            layers += hidden(in_dim)
            for _ in range(nlayers - 2):
                layers += hidden(hidden_dim)
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

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., in_dim]`` -> the L2-normalised bottleneck ``[..., bottleneck_dim]``."""
        z = self.mlp(x)
        if self.norm == "center":
            z = z - z.reshape(-1, z.shape[-1]).mean(0)
        return F.normalize(z, dim=-1, eps=self.norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., in_dim]`` -> logits ``[..., out_dim]`` (cosine similarities to the prototypes)."""
        return self.last_layer(self.bottleneck(x))
