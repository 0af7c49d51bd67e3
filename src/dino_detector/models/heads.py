"""Prediction heads."""
from __future__ import annotations

import math

import torch
from torch import nn

PRIOR_PROB = 0.01  # focal-loss prior: initial foreground probability of every query (RetinaNet)


class MLP(nn.Module):
    """Feed-forward network: ``num_layers`` linear layers with ReLU between them."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [out_dim]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def class_head(dim: int, num_classes: int) -> nn.Linear:
    head = nn.Linear(dim, num_classes)
    nn.init.constant_(head.bias, -math.log((1 - PRIOR_PROB) / PRIOR_PROB))
    return head


def box_head(dim: int, num_layers: int) -> MLP:
    """Predicts (cx, cy, w, h) deltas in logit space; zero-initialised so it starts at its reference box."""
    head = MLP(dim, dim, 4, num_layers)
    nn.init.zeros_(head.layers[-1].weight)
    nn.init.zeros_(head.layers[-1].bias)
    return head


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))
