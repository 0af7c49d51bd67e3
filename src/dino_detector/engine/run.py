"""The skeleton every training-like run shares (detection training, SSL pretraining): device, processes,
seeds, output folder, time budget, TensorBoard logger, atomic checkpoints with every process's RNG state,
and resuming them. One CPU, one GPU and ``torchrun`` with many processes run the same code; only process 0
writes files and logs (ARCHITECTURE.md, "runs")."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..runtime.checkpoint import remove_stale_temporaries, rng_state, save_atomic, set_rng_state
from ..runtime.device import resolve_device, seed_everything
from ..runtime.distributed import DistInfo, barrier, gather_objects, init_distributed, sum_across_processes
from ..runtime.logging import RunLogger

log = logging.getLogger(__name__)


class RunContext:
    """Sets up a run's processes and folder; ``save`` / ``restore_rng`` / ``out_of_time`` are collectives in
    a multi-process run (every process calls them at the same point)."""

    def __init__(self, *, device: str, seed: int, output_dir: str | Path, time_budget_min: float = 0.0,
                 log_dir: str | Path | None = None):
        self.device = resolve_device(device)
        self.dist: DistInfo = init_distributed(self.device.type)
        if self.dist.world_size > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        seed_everything(seed + self.dist.rank)  # own augmentation draws per process; DDP syncs the weights
        self.out = Path(output_dir)
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.out)
        self.budget_s = time_budget_min * 60
        self.log_dir = Path(log_dir) if log_dir else self.out / "tensorboard"
        self._logger: RunLogger | None = None

    @property
    def logger(self) -> RunLogger:
        """The TensorBoard writer, opened on first use (a run that stops on bad input leaves no event file)."""
        if self._logger is None:
            self._logger = RunLogger(self.log_dir, enabled=self.dist.is_main)
        return self._logger

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def out_of_time(self, elapsed_s: float) -> bool:
        """True on every process once any process has trained for the whole time budget (never without one)."""
        if self.budget_s <= 0:
            return False
        return sum_across_processes([float(elapsed_s >= self.budget_s)], self.device)[0] > 0

    def save(self, path: str | Path, state: dict) -> Path:
        """Write ``state`` plus every process's RNG state (``rng``) atomically; process 0 writes, all wait."""
        path = Path(path)
        rng = gather_objects(rng_state())
        if self.is_main:
            save_atomic({**state, "rng": rng}, path)
        barrier()
        return path

    def restore_rng(self, saved) -> None:
        """This process's RNG state from a checkpoint's ``rng`` (one dict per process of the run that saved it)."""
        if isinstance(saved, dict):
            saved = [saved]  # written by one process
        if saved and len(saved) == self.dist.world_size:
            set_rng_state(saved[self.dist.rank])
        elif saved:
            log.warning("checkpoint written by %d processes, resumed by %d: random augmentation draws are "
                        "reseeded, so the run continues equivalently but not bit-for-bit", len(saved),
                        self.dist.world_size)

    def close(self) -> None:
        if self._logger is not None:
            self._logger.close()
