"""Prediction heads: class scores and box deltas, linear or MLP, sigmoid or softmax classification."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

PRIOR_PROB = 0.01  # focal-loss prior: initial foreground probability of every query (RetinaNet)


class MLP(nn.Module):
    """Feed-forward network: ``num_layers`` linear layers with ReLU (and optional dropout) between them."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int, dropout: float = 0.0):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [out_dim]))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.dropout(torch.relu(x))
        return x


@dataclass(frozen=True)
class HeadSpec:
    """How the class and box heads are built, shared by the decoder layers and the two-stage proposals.

    ``softmax`` False: one sigmoid score per class (focal loss). True: an extra "no object" logit, softmax
    over C + 1, trained with cross-entropy (original DETR). ``class_layers`` 1 is a linear classifier."""
    num_classes: int
    softmax: bool = False
    class_layers: int = 1
    box_layers: int = 3
    dropout: float = 0.0

    @property
    def num_logits(self) -> int:
        return self.num_classes + int(self.softmax)

    def class_head(self, dim: int) -> nn.Module:
        head = MLP(dim, dim, self.num_logits, self.class_layers, self.dropout)
        last = head.layers[-1]
        if not self.softmax:  # every query starts as background with probability 1 - PRIOR_PROB
            nn.init.constant_(last.bias, -math.log((1 - PRIOR_PROB) / PRIOR_PROB))
        return head

    def box_head(self, dim: int) -> MLP:
        """Predicts (cx, cy, w, h) deltas in logit space; zero-initialised so it starts at its reference box."""
        head = MLP(dim, dim, 4, self.box_layers, self.dropout)
        nn.init.zeros_(head.layers[-1].weight)
        nn.init.zeros_(head.layers[-1].bias)
        return head


def class_probabilities(logits: torch.Tensor, softmax: bool) -> torch.Tensor:
    """Per-class foreground probabilities [..., C] from logits [..., C] (sigmoid) or [..., C + 1] (softmax,
    the last column being "no object")."""
    return logits.softmax(-1)[..., :-1] if softmax else logits.sigmoid()


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))
