"""Run logging: console logger, TensorBoard writer (optional), JSON files written atomically."""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path


def setup_console(level: int = logging.INFO) -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_dino_detector", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        handler._dino_detector = True
        root.addHandler(handler)
    root.setLevel(level)


def write_json(obj, path: str | Path, indent: int | None = 2) -> None:
    """Atomic JSON write; ``indent=None`` for large files such as prediction lists."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=indent))
    os.replace(tmp, path)


class ScalarLogger:
    """TensorBoard scalars when tensorboard is installed; a no-op otherwise."""

    def __init__(self, log_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(log_dir))
        except ImportError:
            logging.getLogger(__name__).warning("tensorboard is not installed: no event files are written")
            self.writer = None

    def scalars(self, values: dict, step: int, prefix: str) -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            if isinstance(v, (int, float)):
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
