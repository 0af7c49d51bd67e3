"""Run logging: console logger, TensorBoard writer, JSON files written atomically. torch is imported only
where a tensor is handled, so that entry modules can set up the console before the heavy imports.

TensorBoard tags (``RunLogger``): ``train/<loss term>`` and ``train/loss``, ``lr/<group>``,
``val/<COCO metric>`` and ``val/loss*``, ``val_per_class_AP/<class>``, ``val_per_class_precision/<class>``,
``memory/<counter>``, ``perf/images_per_s``, ``params/<block>`` and ``grads/<block>`` histograms, and
``images/train`` (true boxes green, predictions red) with ``--log_images``.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path

TRUE_COLOUR, PRED_COLOUR = "lime", "red"


class CurrentStdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is when a record is emitted: it may be replaced after set-up (output
    capture, notebooks), and a handler holding the old, closed stream would fail on every message."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)

    def format(self, record: logging.LogRecord) -> str:
        """The message as text any stream can write: a non-UTF-8 file name's bytes shown as ``\\xe9``."""
        text = super().format(record)
        for errors in ("strict", "surrogateescape", "backslashreplace"):
            try:
                return text.encode("utf-8", errors).decode("utf-8", "backslashreplace")
            except UnicodeEncodeError:
                continue
        return text


def setup_console(level: int = logging.INFO) -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_dino_detector", False) for h in root.handlers):
        handler = CurrentStdoutHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        handler._dino_detector = True
        root.addHandler(handler)
    root.setLevel(level)


def write_json(obj, path: str | Path, indent: int | None = 2) -> None:
    """Atomic JSON write (a temporary file of its own, then a rename: processes writing the same file never
    see half of it); ``indent=None`` for large files such as prediction lists."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(obj, indent=indent))
    os.replace(tmp, path)


def histogram_group(name: str) -> str:
    """Parameter name -> its block: up to the first numeric part ("decoder.layers.0", "backbone.vit.encoder
    .layer.3"), else its first three parts. Hundreds of tensors become a few dozen readable histograms."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:3])


def draw_boxes(image, true_xyxy, pred_xyxy):
    """[3, H, W] float in 0..1 -> uint8 [3, H, W] with true boxes (xyxy pixels) in green, predictions in red."""
    import torch
    from torchvision.utils import draw_bounding_boxes

    canvas = (image.detach().float().clamp(0, 1) * 255).to(torch.uint8).cpu()
    if len(true_xyxy):
        canvas = draw_bounding_boxes(canvas, true_xyxy.detach().float().cpu(), colors=TRUE_COLOUR, width=2)
    if len(pred_xyxy):
        canvas = draw_bounding_boxes(canvas, pred_xyxy.detach().float().cpu(), colors=PRED_COLOUR, width=1)
    return canvas


class RunLogger:
    """TensorBoard events of one run; a no-op when disabled (non-zero ranks) or tensorboard is missing."""

    def __init__(self, log_dir: str | Path, enabled: bool = True):
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(log_dir))
        except ImportError:
            logging.getLogger(__name__).warning("tensorboard is not installed: no event files are written")

    def scalars(self, values: dict, step: int, prefix: str) -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def histograms(self, model, step: int) -> None:
        """Trainable parameters and their gradients, one histogram per block (see ``histogram_group``)."""
        if self.writer is None:
            return
        import torch

        params: dict[str, list] = {}
        grads: dict[str, list] = {}
        for name, p in model.named_parameters():
            if p.requires_grad:
                group = histogram_group(name)
                params.setdefault(group, []).append(p.detach().float().flatten().cpu())
                if p.grad is not None:
                    grads.setdefault(group, []).append(p.grad.detach().float().flatten().cpu())
        for prefix, groups in (("params", params), ("grads", grads)):
            for group, values in groups.items():
                self.writer.add_histogram(f"{prefix}/{group}", torch.cat(values), step)

    def image(self, tag: str, image, true_xyxy, pred_xyxy, step: int) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, draw_boxes(image, true_xyxy, pred_xyxy), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
