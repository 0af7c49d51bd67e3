"""Non-finite steps: a step whose loss or gradient is NaN / inf is skipped (no optimizer or EMA update) and
counted, with a warning that names the step and the terms that were not finite; ``max_bad_steps`` of them
in a row stop the run (``NonFiniteLossError``) without writing over its last checkpoint. Detection training
and SSL pretraining share it. Every process sees the same all-reduced loss and synchronised gradients, so
every process decides the same."""
from __future__ import annotations

import logging
import math

import torch

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Too many non-finite steps in a row: the run stops; its checkpoints are those of the last good epoch."""


def gradient_norm(parameters) -> float:
    """The total L2 norm of the parameters' gradients (inf / nan when any gradient is)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0


class StepGuard:
    def __init__(self, max_bad_steps: int, what: str = "run"):
        if max_bad_steps < 1:
            raise ValueError(f"max_bad_steps must be at least 1, got {max_bad_steps}")
        self.max_bad_steps, self.what = max_bad_steps, what
        self.total = 0  # skipped steps of the whole run
        self.in_a_row = 0
        self.last_checkpoint = ""  # named in the stop message; set by the run after each checkpoint it writes

    def skip(self, losses: dict[str, float], grad_norm: float | None, *, step: int, epoch: int) -> bool:
        """True when the step must be skipped (its losses or its gradient norm are not finite); raises
        ``NonFiniteLossError`` at the ``max_bad_steps``-th such step in a row."""
        bad_terms = sorted(k for k, v in losses.items() if not math.isfinite(v))
        bad_grad = grad_norm is not None and not math.isfinite(grad_norm)
        if not bad_terms and not bad_grad:
            self.in_a_row = 0
            return False
        self.total += 1
        self.in_a_row += 1
        what = (f"loss terms not finite: {', '.join(f'{k}={losses[k]}' for k in bad_terms)}" if bad_terms
                else f"gradient norm is {grad_norm}")
        if self.in_a_row >= self.max_bad_steps:
            kept = f"; its last checkpoint, {self.last_checkpoint}, is intact" if self.last_checkpoint else ""
            raise NonFiniteLossError(
                f"{self.in_a_row} steps in a row with a non-finite loss or gradient (--max_bad_steps "
                f"{self.max_bad_steps}), the last at epoch {epoch + 1}, step {step}: {what}. The {self.what} "
                f"stopped{kept}. Lower --lr, set --grad_clip, or check the data of these steps")
        log.warning("step %d (epoch %d) skipped: %s (%d in a row, %d in this %s; the run stops at %d in a row)",
                    step, epoch + 1, what, self.in_a_row, self.total, self.what, self.max_bad_steps)
        return True

    def state(self) -> dict:
        return {"total": self.total, "in_a_row": self.in_a_row}

    def load(self, saved: dict | None) -> None:
        if saved:
            self.total, self.in_a_row = int(saved["total"]), int(saved["in_a_row"])
