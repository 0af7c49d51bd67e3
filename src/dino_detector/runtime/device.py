"""Where and how a run computes: the device, the seeds of every random source, data-loading processes and
the autocast dtype."""
from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

log = logging.getLogger(__name__)
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# CPU-only machines with at most this many cores load data in the main process: worker processes would
# take cores from the model
SMALL_MACHINE_CPUS = 4
MAX_WORKERS = 8


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's generators (CUDA's included)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else the CPU. Asking for CUDA on a machine without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return torch.device(name)


def resolve_num_workers(requested: int, device: torch.device) -> int:
    """-1 (auto): no worker processes on small CPU-only machines, else up to 8 (half the cores)."""
    if requested >= 0:
        return requested
    cpus = os.cpu_count() or 1
    return 0 if device.type == "cpu" and cpus <= SMALL_MACHINE_CPUS else min(MAX_WORKERS, cpus // 2)


def resolve_amp(*, amp: bool, amp_dtype: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--amp`` (None without it), refusing combinations that cannot work."""
    if amp_dtype not in AMP_DTYPES:
        raise ValueError(f"amp_dtype must be one of {sorted(AMP_DTYPES)}, got '{amp_dtype}'")
    if not amp:
        return None
    if device.type != "cuda" and amp_dtype == "fp16":
        raise ValueError("--amp_dtype fp16 needs CUDA (its gradient scaler is CUDA-only); on CPU use bf16 or "
                         "drop --amp")
    if device.type == "cpu":
        log.warning("--amp on CPU: bf16 autocast is only fast on CPUs with bf16 units (AMX / AVX512-BF16); "
                    "elsewhere it is far slower than float32")
    return AMP_DTYPES[amp_dtype]
