"""Full training state on disk: written atomically, read with ``weights_only=True``, pruned to the newest K,
and checked against the model it is loaded into (a clear list of mismatches, not a stack trace)."""
from __future__ import annotations

import logging
import os
import random
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)
EPOCH_FILE = re.compile(r"dino_detector_epoch_(\d+)\.pth$")
# settings that change the training, not the shapes: not reported as architecture differences
_NOT_ARCHITECTURE = {"pretrained", "dino_weights", "backbone_mode", "lora_dropout", "dropout", "head_dropout", "aux_loss"}


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


def save_atomic(obj: dict, path: str | Path) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename: a crash (even SIGKILL)
    at any moment leaves either the previous file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_stale_temporaries(folder: str | Path) -> int:
    """Half-written checkpoints left by a killed run (their complete predecessors are untouched)."""
    stale = list(Path(folder).glob("dino_detector_*.pth.*.tmp"))
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


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read checkpoint {path}: {err}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "metadata" not in ckpt:
        raise ValueError(f"{path} is not a dino_detector checkpoint (no 'model' / 'metadata' entries)")
    return ckpt


def load_model_state(model: torch.nn.Module, ckpt: dict, path: str | Path) -> None:
    """Strict load; on any mismatch a ValueError lists the differing settings and tensors."""
    own = model.state_dict()
    saved = ckpt["model"]
    missing = sorted(set(own) - set(saved))
    unexpected = sorted(set(saved) - set(own))
    shapes = [f"{k}: checkpoint {tuple(saved[k].shape)}, model {tuple(own[k].shape)}"
              for k in own if k in saved and own[k].shape != saved[k].shape]
    if not (missing or unexpected or shapes):
        model.load_state_dict(saved)
        return
    was, now = ckpt["metadata"].get("model", {}), model.metadata().get("model", {})
    settings = [f"{k}: checkpoint {was.get(k)!r}, now {now.get(k)!r}" for k in sorted(set(was) | set(now))
                if k not in _NOT_ARCHITECTURE and was.get(k) != now.get(k)]
    lines = [f"checkpoint {path} does not fit this model (pass the same settings, or --skip_checkpoint_load "
             "to start fresh)"]
    for title, items in (("different settings", settings), ("tensors of different shape", shapes),
                         ("tensors missing from the checkpoint", missing),
                         ("tensors the model does not have", unexpected)):
        if items:
            more = f" ... and {len(items) - 8} more" if len(items) > 8 else ""
            lines.append(f"  {title} ({len(items)}): " + "; ".join(items[:8]) + more)
    raise ValueError("\n".join(lines))
