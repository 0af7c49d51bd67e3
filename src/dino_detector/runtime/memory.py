"""Process memory for the logs: CPU resident set size (current and peak) and CUDA allocator counters."""
from __future__ import annotations

import os
import resource

import torch

MB = 1024 * 1024


def cpu_rss_mb() -> float:
    """Current resident set size (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB
    except (OSError, ValueError, IndexError):
        return 0.0


def memory_stats(device: torch.device) -> dict[str, float]:
    """cpu_rss_mb, cpu_peak_rss_mb and, on CUDA, cuda_allocated_mb / cuda_reserved_mb / cuda_peak_mb."""
    stats = {"cpu_rss_mb": cpu_rss_mb(), "cpu_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        stats.update(cuda_allocated_mb=torch.cuda.memory_allocated(device) / MB,
                     cuda_reserved_mb=torch.cuda.memory_reserved(device) / MB,
                     cuda_peak_mb=torch.cuda.max_memory_allocated(device) / MB)
    return stats


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
