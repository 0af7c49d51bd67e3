"""Exported files beside the checkpoint they come from, made once and reused while the checkpoint is unchanged.

For ``run/dino_detector_best.pth`` (``ema`` weights, 100 detections per image) the files are

    run/dino_detector_best.ema.top100.onnx         the ONNX graph with post-processing (dynamic batch and size)
    run/dino_detector_best.ema.top100.xml / .bin   the same as OpenVINO IR (fp32 weights)
    run/dino_detector_best.ema.top100.int8.onnx    INT8, onnxruntime's static quantisation (QDQ)
    run/dino_detector_best.ema.top100.int8.xml     that QDQ graph as OpenVINO IR (OpenVINO runs it in int8)
    run/dino_detector_best.ema.top100.int8-nncf.xml  INT8, NNCF's post-training quantisation of the IR

each with a ``.json`` beside it that records what it was made from (the checkpoint's size and modification
time, the library version, the calibration images); a file whose record no longer matches is made again.
A ``save_pretrained`` folder keeps them inside it (``model.ema.top100.onnx``). Where the checkpoint's folder
is read-only they go to ``~/.cache/dino_detector/<hash of the checkpoint path>/``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)
SUFFIX = {"onnx": ".onnx", "openvino": ".xml"}


def source_record(checkpoint: Path) -> dict:
    """What identifies the checkpoint's content cheaply: each file's size and modification time."""
    from .. import __version__
    files = [checkpoint / n for n in ("model.safetensors", "config.json")] if checkpoint.is_dir() else [checkpoint]
    return {"checkpoint": str(checkpoint.resolve()), "library": __version__,
            "files": {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file()}}


def _writable(folder: Path) -> bool:
    return folder.is_dir() and os.access(folder, os.W_OK)


def artifact_path(checkpoint: Path, fmt: str, *, weights: str, top_k: int, tag: str = "") -> Path:
    """Where the ``fmt`` ("onnx" or "openvino") file of ``checkpoint`` lives (see the module docstring);
    ``tag``: "int8" or "int8-nncf" for the quantised ones."""
    folder, stem = (checkpoint, "model") if checkpoint.is_dir() else (checkpoint.parent, checkpoint.stem)
    if not _writable(folder):
        digest = hashlib.sha256(str(checkpoint.resolve()).encode()).hexdigest()[:16]
        folder = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dino_detector" / digest
        folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{stem}.{weights}.top{top_k}{'.' + tag if tag else ''}{SUFFIX[fmt]}"


def record_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + ".json")


def is_current(artifact: Path, record: dict) -> bool:
    """The artifact exists and was made from exactly ``record`` (checkpoint files, version, settings)."""
    try:
        return artifact.is_file() and json.loads(record_path(artifact).read_text()) == record
    except (OSError, ValueError):
        return False


def write_record(artifact: Path, record: dict) -> None:
    record_path(artifact).write_text(json.dumps(record, indent=1))
