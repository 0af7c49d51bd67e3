"""BEiT/iBOT-style block masking of patch grids for masked-token prediction."""
from __future__ import annotations

import math

import torch


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _randint(high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in ``[0, high)``."""
    return int(torch.randint(high, (), generator=generator).item())


def block_mask(grid_h: int, grid_w: int, ratio: float, generator: torch.Generator | None,
               min_block: int = 4, max_aspect: float = 3.0, max_attempts: int = 200) -> torch.Tensor:
    """Mask of shape ``[grid_h, grid_w]`` (bool) with at most ``int(ratio * grid_h * grid_w)`` True cells.

    Random rectangles (area in ``[min_block, remaining budget]``, aspect ratio log-uniform in
    ``[1/max_aspect, max_aspect]``) are added while they keep the count within budget; contiguous
    blocks make the task harder than scattered patches, which neighbours would trivially fill in.
    Stops when the budget is reached or after ``max_attempts`` rectangle draws.
    """
    mask = torch.zeros(grid_h, grid_w, dtype=torch.bool)
    budget = int(ratio * grid_h * grid_w)
    log_aspect = math.log(max_aspect)
    count = 0
    for _ in range(max_attempts):
        remaining = budget - count
        if remaining <= 0:
            break
        area = _uniform(min_block, max(min_block, remaining), generator)
        aspect = math.exp(_uniform(-log_aspect, log_aspect, generator))
        h = max(1, int(round(math.sqrt(area * aspect))))
        w = max(1, int(round(math.sqrt(area / aspect))))
        if h > grid_h or w > grid_w:
            continue
        top = _randint(grid_h - h + 1, generator)
        left = _randint(grid_w - w + 1, generator)
        block = mask[top:top + h, left:left + w]
        added = int((~block).sum())
        # Overlap with earlier blocks lets small remainders be filled; never exceed the budget.
        if 0 < added <= remaining:
            block.fill_(True)
            count += added
    return mask


def batch_masks(batch: int, grid_h: int, grid_w: int, ratio_range: tuple[float, float] = (0.1, 0.5),
                probability: float = 0.5, generator: torch.Generator | None = None,
                min_block: int = 4, max_aspect: float = 3.0) -> torch.Tensor:
    """``[batch, grid_h * grid_w]`` bool masks: each image masked with ``probability``, else all False.

    Masked images draw their ratio uniformly in ``ratio_range``. ``generator=None`` uses torch's
    global RNG; a given generator state always yields the same masks.
    """
    masks = torch.zeros(batch, grid_h * grid_w, dtype=torch.bool)
    for b in range(batch):
        if torch.rand((), generator=generator).item() >= probability:
            continue
        ratio = _uniform(ratio_range[0], ratio_range[1], generator)
        masks[b] = block_mask(grid_h, grid_w, ratio, generator, min_block, max_aspect).flatten()
    return masks


def masked_token_mean(token_loss: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``token_loss [B, T]`` at ``masks [B, T]`` -> scalar: the mean over each image's masked tokens, then over
    the images with at least one (so heavily masked images do not dominate); 0, still in the graph, when
    nothing is masked. ``where`` rather than a product: unmasked positions must not leak NaN / inf."""
    masks = masks.bool()
    token_loss = torch.where(masks, token_loss, torch.zeros_like(token_loss))
    n_masked = masks.sum(dim=1)
    has_mask = n_masked > 0
    if not bool(has_mask.any()):
        return token_loss.sum() * 0.0  # keeps the graph connected for backward()
    return (token_loss.sum(dim=1)[has_mask] / n_masked[has_mask].to(token_loss.dtype)).mean()
