"""One class for every scheduled scalar of a run: learning-rate factors, the teacher's EMA momentum, the
teacher temperature, weight decay (the DINOv2 codebase's ``CosineScheduler`` idea, with a time budget).

A run's length is measured in optimizer steps and, when it has one, in seconds of its time budget; the
``progress`` of a run is whichever of the two is further along, so a schedule of a budgeted run reaches its
end when the budget does, even if the steps would have gone on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

KINDS = ("constant", "cosine", "step")


@dataclass(frozen=True)
class Clock:
    """Where a run is: optimizer steps taken, the epoch being trained (0-based), training seconds so far."""
    step: int = 0
    epoch: int = 0
    elapsed_s: float = 0.0


@dataclass(frozen=True)
class Schedule:
    """``value(clock)``: after an optional warm-up, one of
    - ``constant``: ``base``;
    - ``cosine``: from ``base`` at progress 0 to ``final`` at progress 1;
    - ``step``: ``base`` until the drop (epoch ``drop_epoch``, or ``drop_budget_fraction`` of the time budget,
      whichever comes first), then ``base * drop_factor``.
    During the warm-up the value moves linearly from ``warmup_start`` to that curve; its length is counted
    in steps (``warmup_steps``: fraction done (step + 1) / warmup_steps), epochs (``warmup_epochs``) or as a
    fraction of the run's progress (``warmup_fraction``), whichever is set."""
    base: float
    kind: str = "constant"
    final: float = 0.0
    total_steps: int = 1
    budget_s: float = 0.0
    warmup_start: float = 0.0
    warmup_steps: int = 0
    warmup_epochs: float = 0.0
    warmup_fraction: float = 0.0
    drop_epoch: int = 0
    drop_budget_fraction: float = 1.0
    drop_factor: float = 1.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"schedule kind must be one of {KINDS}, got '{self.kind}'")

    def progress(self, clock: Clock) -> float:
        """Fraction of the run done, 0..1: by steps, or by the time budget when that is further along."""
        done = clock.step / max(1, self.total_steps)
        if self.budget_s > 0:
            done = max(done, clock.elapsed_s / self.budget_s)
        return min(1.0, done)

    def warmup(self, clock: Clock) -> float:
        """Fraction of the warm-up done (1.0 without a warm-up, and after it)."""
        if self.warmup_steps > 0:
            return min(1.0, (clock.step + 1) / self.warmup_steps)
        if self.warmup_epochs > 0:
            return min(1.0, clock.epoch / self.warmup_epochs)
        if self.warmup_fraction > 0:
            return min(1.0, self.progress(clock) / self.warmup_fraction)
        return 1.0

    def curve(self, clock: Clock) -> float:
        if self.kind == "cosine":
            return self.final + (self.base - self.final) * 0.5 * (1 + math.cos(math.pi * self.progress(clock)))
        if self.kind == "step":
            dropped = (self.drop_epoch > 0 and clock.epoch >= self.drop_epoch) or (
                self.budget_s > 0 and clock.elapsed_s >= self.budget_s * self.drop_budget_fraction)
            return self.base * (self.drop_factor if dropped else 1.0)
        return self.base

    def __call__(self, clock: Clock) -> float:
        warm = self.warmup(clock)
        curve = self.curve(clock)
        return curve if warm >= 1.0 else self.warmup_start + (curve - self.warmup_start) * warm


def off_for_final_share(share: float, *, epochs: int, budget_s: float = 0.0) -> Schedule:
    """A switch: 1 (on) until the last ``share`` of a run, then 0, by epochs (from epoch ceil((1 - share) x
    epochs)) or by the time budget (after (1 - share) of it), whichever comes first. Strong augmentation
    uses it (YOLO turns mosaic off for its last epochs)."""
    if not 0 <= share <= 1:
        raise ValueError(f"the final share must be in [0, 1], got {share}")
    if share == 0:
        return Schedule(1.0)
    if share == 1:
        return Schedule(0.0)
    return Schedule(1.0, kind="step", drop_epoch=max(1, math.ceil((1 - share) * epochs)), budget_s=budget_s,
                    drop_budget_fraction=1 - share, drop_factor=0.0)


def strong_augmentation_window(start_epoch: int, off_share: float, *, epochs: int,
                               budget_s: float = 0.0) -> Callable[[Clock], bool]:
    """Whether strong augmentation is on at a clock: from epoch ``start_epoch`` (0-based; the first epochs learn
    from plain images, as DEIM's warm-up without augmentation) until the last ``off_share`` of the run
    (``off_for_final_share``). A run that ends before ``start_epoch`` never augments strongly: a short budget
    is spent learning, not regularising."""
    if start_epoch < 0:
        raise ValueError(f"the start epoch must be >= 0, got {start_epoch}")
    final = off_for_final_share(off_share, epochs=epochs, budget_s=budget_s)
    return lambda clock: clock.epoch >= start_epoch and final(clock) > 0

