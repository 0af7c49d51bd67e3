"""Training state on disk: written atomically, read with ``weights_only=True``, pruned to the newest K, with
every process's RNG state. What a detector checkpoint holds is models/persistence.py's business."""
from __future__ import annotations

import logging
import os
import random
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)
EPOCH_FILE = re.compile(r"dino_detector_epoch_(\d+)\.pth$")


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, permissions); the previous file is untouched."""


def free_space(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 2**30:.2f} GiB free"
    except OSError:
        return "free space unknown"


def save_atomic(obj: dict, path: str | Path) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename: a crash (even SIGKILL)
    at any moment leaves either the previous file or the complete new one. An ``OSError`` on the way (disk
    full, permissions) removes the temporary file and becomes a ``CheckpointWriteError`` naming the folder
    and its free space."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        previous = f"the previous {path.name} is untouched" if path.exists() else f"no earlier {path.name}"
        raise CheckpointWriteError(f"could not write {path}: {err.strerror or err} ({free_space(path.parent)} "
                                   f"in {path.parent}); {previous}") from err
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def remove_stale_temporaries(folder: str | Path) -> int:
    """Half-written checkpoints left by a killed run (their complete predecessors are untouched)."""
    stale = list(Path(folder).glob("*.pth.*.tmp"))  # save_atomic's temporary names
    for f in stale:
        f.unlink(missing_ok=True)
    if stale:
        log.info("removed %d half-written checkpoint file(s) left by an interrupted run", len(stale))
    return len(stale)


def prune_epoch_checkpoints(folder: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` ``dino_detector_epoch_N.pth`` files (keep <= 0: keep all)."""
    if keep <= 0:
        return []
    files = sorted((int(m.group(1)), f) for f in Path(folder).iterdir() if (m := EPOCH_FILE.search(f.name)))
    doomed = [f for _, f in files[:-keep]]
    for f in doomed:
        f.unlink(missing_ok=True)
    return doomed


def load_checkpoint(path: str | Path, map_location="cpu", required: tuple[str, ...] = ("model",),
                    kind: str = "dino_detector checkpoint") -> dict:
    """The dict saved at ``path``; a ValueError names the file when it is unreadable or lacks an entry of
    ``required`` (``kind`` says what was expected)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read checkpoint {path}: {err}") from None
    if not isinstance(ckpt, dict) or any(key not in ckpt for key in required):
        raise ValueError(f"{path} is not a {kind} (no {' / '.join(repr(k) for k in required)} entries)")
    return ckpt
