"""The skeleton every training-like run shares (detection training, SSL pretraining): device, processes,
seeds, output folder, time budget, TensorBoard logger, atomic checkpoints with every process's RNG state,
and resuming them. One CPU, one GPU and ``torchrun`` with many processes run the same code; only process 0
writes files and logs (ARCHITECTURE.md, "runs")."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..runtime.checkpoint import (CheckpointWriteError, remove_stale_temporaries, rng_state, save_atomic,
                                  set_rng_state)
from ..runtime.device import resolve_device, seed_everything
from ..runtime.distributed import DistInfo, gather_objects, init_distributed, sum_across_processes
from ..runtime.logging import RunLogger
from ..runtime.signals import STOP_SIGNALS, StopRequests, signal_name
from .guard import NonFiniteLossError

log = logging.getLogger(__name__)


class RunInterrupted(Exception):
    """SIGTERM / SIGINT: the run finished its step, wrote ``checkpoint`` and stopped."""

    def __init__(self, signum: int, checkpoint: Path, resume_flag: str = "--checkpoint"):
        self.signum, self.checkpoint = signum, checkpoint
        super().__init__(f"stopped by {signal_name(signum)} after finishing the current step; the run is saved "
                         f"in {checkpoint}: resume with {resume_flag} {checkpoint}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention for a process ended by a signal


# how a run that started can stop short: a signal (after saving), too many non-finite steps, a failed write
RUN_STOPS = (RunInterrupted, NonFiniteLossError, CheckpointWriteError)


def stopped_run_exit(err: Exception) -> int:
    """A command's answer to a run that started and stopped (``RUN_STOPS``): one message on stderr, and the
    exit code: 128 + the signal for an interruption (the shell's convention), 1 for a fault."""
    import sys

    if isinstance(err, RunInterrupted):
        print(err, file=sys.stderr)
        return err.exit_code
    print(f"error: {err}", file=sys.stderr)
    return 1


class Stop:
    """Why a loop stops at this step (the same answer on every process)."""

    def __init__(self, out_of_time: bool = False, signum: int | None = None):
        self.out_of_time, self.signum = out_of_time, signum

    def __bool__(self) -> bool:
        return self.out_of_time or self.signum is not None


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
        self.stop_requests = StopRequests()  # entered by the training loops (``with run.stop_requests:``)

    @property
    def logger(self) -> RunLogger:
        """The TensorBoard writer, opened on first use (a run that stops on bad input leaves no event file)."""
        if self._logger is None:
            self._logger = RunLogger(self.log_dir, enabled=self.dist.is_main)
        return self._logger

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def should_stop(self, elapsed_s: float) -> Stop:
        """After a step: stop for the time budget (once any process has trained for all of it) or for a
        SIGTERM / SIGINT any process received. One all-reduce, so every process stops at the same step."""
        received = self.stop_requests.received
        flags = [float(self.budget_s > 0 and elapsed_s >= self.budget_s)]
        flags += [float(received == s) for s in STOP_SIGNALS]
        over, *seen = sum_across_processes(flags, self.device)
        signum = next((s for s, n in zip(STOP_SIGNALS, seen) if n > 0), None)  # any process's (torchrun forwards)
        return Stop(out_of_time=over > 0, signum=signum)

    def save(self, path: str | Path, state: dict) -> Path:
        """Write ``state`` plus every process's RNG state (``rng``) atomically; process 0 writes, all wait.
        A failed write (disk full, permissions) raises ``CheckpointWriteError`` on every process."""
        path = Path(path)
        rng = gather_objects(rng_state())
        error = None
        if self.is_main:
            try:
                save_atomic({**state, "rng": rng}, path)
            except CheckpointWriteError as err:
                error = err
        failed = sum_across_processes([float(error is not None)], self.device)[0]  # also the barrier
        if error is not None:
            raise error
        if failed:
            raise CheckpointWriteError(f"process 0 could not write {path}")
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
