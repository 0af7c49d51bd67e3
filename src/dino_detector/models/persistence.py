"""A detector on disk: training checkpoints and ``save_pretrained`` folders, and the one reader of what
rebuilds a model from either.

A training checkpoint holds ``spec`` (the run specification, as in ``config.yaml``) and ``metadata`` (the
model's own view of it: its model section with the backbone mode it trains in now, image sizes and
classes), and two sets of weights when the run kept an EMA: ``model`` (raw) and ``ema``. The deployable
weights are the EMA's when there is one (``weights="auto"``); ``"raw"`` / ``"ema"`` choose. A
``save_pretrained`` folder holds one set, and its ``config.json`` the run specification when it came from a
run, else the model's metadata, with ``weights`` (which set). Both have the same ``model`` / ``data``
layout, so ``saved_model_settings`` reads every one of them, and the files of earlier versions (classes at
the top level) as well.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..backbones.resolve import architecture_only
from ..config import ModelConfig
from ..data.transforms import Resize
from ..runtime.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

WEIGHTS = ("auto", "raw", "ema")
WEIGHTS_FILE = "model.safetensors"  # a save_pretrained folder's one set of weights
# what a training run's folder (its output_dir) stands for where a model is asked for: the checkpoint it
# ships (best by the validation metric), else the one it ended with, else the one it would resume from
RUN_CHECKPOINTS = ("dino_detector_best.pth", "dino_detector_final.pth", "dino_detector_last.pth")
_REPORTED: set[Path] = set()  # run folders' checkpoints model_path has named in the log
# settings that change the training, or are recorded, not the shapes: not reported as architecture differences
NOT_ARCHITECTURE = {"pretrained", "dino_weights", "backbone_weights", "backbone_arch", "backbone_mode", "lora_dropout",
                    "dropout", "head_dropout", "aux_loss", "class_names", "category_ids", "soft_nms_sigma"}


def saved_model_settings(saved: dict) -> tuple[ModelConfig, Resize]:
    """(model section for rebuilding the architecture without loading weights, image sizes) of a run
    specification, a checkpoint's metadata or a ``config.json``."""
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        raise ValueError("the saved settings have no 'model' section")
    model = dict(saved["model"])
    for key in ("category_ids", "class_names"):  # files before the run specification kept them at the top
        if not model.get(key) and saved.get(key):
            model[key] = saved[key]
    return architecture_only(ModelConfig.from_dict(model, where="saved model settings")), Resize.of(saved.get("data", {}))


def checkpoint_settings(ckpt: dict) -> dict:
    """What rebuilds a checkpoint's model: its run specification, or the metadata of older / hand-made files."""
    return ckpt["spec"] if isinstance(ckpt.get("spec"), dict) else ckpt["metadata"]


def load_detector_checkpoint(path: str | Path, map_location="cpu") -> dict:
    ckpt = load_checkpoint(path, map_location)
    if "spec" not in ckpt and "metadata" not in ckpt:
        raise ValueError(f"{path} is not a dino_detector checkpoint (no 'model' / 'spec' entries)")
    return ckpt


def deployable(ckpt: dict) -> str:
    """'ema' when the checkpoint holds EMA weights (what a run with --ema evaluates for best and ships)."""
    return "ema" if ckpt.get("ema") else "raw"


def checkpoint_weights(ckpt: dict, weights: str = "auto", path: str | Path = "checkpoint") -> tuple[dict, str]:
    """(model state dict, which: 'raw' or 'ema') of a checkpoint; ``auto``: the deployable ones."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got '{weights}'")
    which = deployable(ckpt) if weights == "auto" else weights
    if which == "raw":
        return ckpt["model"], "raw"
    if not ckpt.get("ema"):
        raise ValueError(f"{path} holds no EMA weights (its run trained without --ema); use --weights raw")
    prefix = "module."  # torch's AveragedModel wraps the model as .module and counts updates in n_averaged
    return {k[len(prefix):]: v for k, v in ckpt["ema"].items() if k.startswith(prefix)}, "ema"


def load_model_state(model: torch.nn.Module, ckpt: dict, path: str | Path, weights: str = "raw") -> str:
    """Strict load of the checkpoint's ``weights`` (raw, ema or auto); returns which were loaded. On any
    mismatch a ValueError lists the differing settings and tensors."""
    own = model.state_dict()
    saved, which = checkpoint_weights(ckpt, weights, path)
    missing = sorted(set(own) - set(saved))
    unexpected = sorted(set(saved) - set(own))
    shapes = [f"{k}: checkpoint {tuple(saved[k].shape)}, model {tuple(own[k].shape)}"
              for k in own if k in saved and own[k].shape != saved[k].shape]
    if not (missing or unexpected or shapes):
        model.load_state_dict(saved)
        return which
    was, now = checkpoint_settings(ckpt).get("model", {}), model.metadata().get("model", {})
    settings = [f"{k}: checkpoint {was.get(k)!r}, now {now.get(k)!r}" for k in sorted(set(was) | set(now))
                if k not in NOT_ARCHITECTURE and was.get(k) != now.get(k)]
    lines = [f"checkpoint {path} does not fit this model (pass the same settings, or --skip_checkpoint_load "
             "to start fresh)"]
    for title, items in (("different settings", settings), ("tensors of different shape", shapes),
                         ("tensors missing from the checkpoint", missing),
                         ("tensors the model does not have", unexpected)):
        if items:
            more = f" ... and {len(items) - 8} more" if len(items) > 8 else ""
            lines.append(f"  {title} ({len(items)}): " + "; ".join(items[:8]) + more)
    raise ValueError("\n".join(lines))


def save_pretrained(model, directory: str | Path, metrics: dict | None = None, spec: dict | None = None) -> None:
    from safetensors.torch import save_file

    from .model_card import model_card
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE))
    saved = {**(spec if spec is not None else model.metadata()), "weights": model.weights}  # raw or ema
    (directory / "config.json").write_text(json.dumps(saved, indent=2))
    (directory / "README.md").write_text(model_card(model, metrics, spec))


def model_path(path: str | Path) -> Path:
    """Where a model is: ``path`` itself (a checkpoint file or a ``save_pretrained`` folder), or, for a
    training run's folder, its first checkpoint of ``RUN_CHECKPOINTS``."""
    path = Path(path)
    if path.is_dir() and not (path / "config.json").is_file():
        for name in RUN_CHECKPOINTS:
            if (path / name).is_file():
                if path / name not in _REPORTED:  # said once: one load resolves the folder several times
                    _REPORTED.add(path / name)
                    log.info("%s is a training run's folder: using its %s", path, name)
                return path / name
    return path


def load_pretrained(cls, directory: str | Path, weights: str = "auto"):
    """A ``save_pretrained`` folder (its one set of weights), a checkpoint file (``weights``: auto, raw, ema)
    or a training run's folder (``model_path``)."""
    from safetensors.torch import load_file
    directory = model_path(directory)
    if directory.is_file():
        return cls.from_checkpoint(directory, weights=weights)
    saved = saved_settings(directory)
    model = cls.from_metadata(saved)
    model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    model.weights = saved.get("weights", "raw")  # a folder holds one set: the one it was exported with
    return model


def weights_file(path: str | Path) -> Path:
    """The file that holds the weights of a checkpoint file (itself) or of a ``save_pretrained`` folder."""
    path = model_path(path)
    return path if path.is_file() else path / WEIGHTS_FILE


def saved_settings(path: str | Path) -> dict:
    """The saved settings (run specification or metadata) of a ``save_pretrained`` folder or a training
    checkpoint file (or a training run's folder: ``model_path``), without building the model."""
    path = model_path(path)
    if path.is_file():
        return checkpoint_settings(load_detector_checkpoint(path))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is neither a save_pretrained folder (config.json + model.safetensors), "
                                f"a checkpoint file nor a training run's folder (with {' or '.join(RUN_CHECKPOINTS)})")
    return json.loads((path / "config.json").read_text())


def saved_model_config(path: str | Path) -> ModelConfig:
    """The model section (classes included) of a ``save_pretrained`` folder or a checkpoint file."""
    return saved_model_settings(saved_settings(path))[0]
