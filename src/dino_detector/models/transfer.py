"""``--init_from``: start a new run from a trained detector (a checkpoint or a ``save_pretrained`` folder).

Every tensor whose name and shape match is loaded. The class-indexed tensors (each class head's last layer,
the denoising label embedding) are rebuilt for the new classes: the row of a class whose name the source
model also has is that class's row there; a new class keeps its fresh initialisation; a softmax classifier's
"no object" row is carried over. Everything else of the run (epochs, optimizer, schedule) starts fresh.

A class-agnostic source (one class, ``object``: a ``--proposals`` detection pretraining run) is the exception:
its one class is objectness, so every class head row of the new classes starts as that row. A fresh row would
score every query alike, and the two-stage selection, which ranks the encoder's proposals by the class head,
would pick random positions until the new head has learnt what the pretrained one already knew: where the
objects are. (The denoising label embedding stays fresh: its rows must tell the classes apart.)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.proposals import PROPOSAL_CLASS
from .denoising import LABEL_EMBEDDING

log = logging.getLogger(__name__)


@dataclass
class TransferReport:
    loaded: list[str] = field(default_factory=list)  # tensors copied whole
    class_rows: list[str] = field(default_factory=list)  # class-indexed tensors rebuilt row by row
    shared_classes: list[str] = field(default_factory=list)
    new_classes: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)  # tensors of this model the source could not fill
    dropped: list[str] = field(default_factory=list)  # tensors of the source this model has no use for
    from_objectness: list[str] = field(default_factory=list)  # new classes whose head rows start as "object"'s

    def lines(self, source: str) -> list[str]:
        out = [f"initialised from {source}: {len(self.loaded)} tensors loaded, {len(self.class_rows)} class-indexed "
               f"tensors rebuilt (classes carried over: {', '.join(self.shared_classes) or 'none'}; new: "
               f"{', '.join(self.new_classes) or 'none'})"]
        if self.from_objectness:
            out.append(f"  class-agnostic source: the class heads of {', '.join(self.from_objectness)} start from "
                       "its objectness row")
        for title, names in (("re-initialised", self.reinitialised), ("dropped from the source", self.dropped)):
            if names:
                more = f" ... and {len(names) - 6} more" if len(names) > 6 else ""
                out.append(f"  {title} ({len(names)}): {', '.join(names[:6])}{more}")
        return out


def load_source(path: str | Path, weights: str = "auto"):
    """(state dict, class names, softmax) of a trained detector: a checkpoint file, a save_pretrained folder or
    a training run's folder (its best checkpoint, else its final one)."""
    from .persistence import (checkpoint_weights, load_detector_checkpoint, model_path, saved_model_settings,
                              saved_settings, weights_file)
    path = model_path(path)
    if path.is_file():
        ckpt = load_detector_checkpoint(path)
        state, _ = checkpoint_weights(ckpt, weights, path)
    else:
        from safetensors.torch import load_file
        state = load_file(str(weights_file(path)))
    cfg, _ = saved_model_settings(saved_settings(path))
    return state, list(cfg.class_names), cfg.classifier == "softmax"


def init_from(model, path: str | Path, weights: str = "auto") -> TransferReport:
    """Load what fits of the detector at ``path`` into ``model`` (in place) and report it."""
    source, source_names, source_softmax = load_source(path, weights)
    own = model.state_dict()
    indexed = model.class_indexed_tensors()
    report = TransferReport()
    names = list(model.class_names)
    row_of = {i: source_names.index(n) for i, n in enumerate(names) if n in source_names}
    report.shared_classes = [names[i] for i in row_of]
    report.new_classes = [n for n in names if n not in source_names]
    objectness = source_names == [PROPOSAL_CLASS] and not model.softmax and not source_softmax
    if objectness:
        report.from_objectness = report.new_classes
    new_state = {}
    for name, tensor in own.items():
        if name not in source:
            report.reinitialised.append(name)
        elif name in indexed:
            src = source[name]
            # a softmax head has a "no object" row a sigmoid head lacks: rows of one do not mean those of the other
            other_meaning = model.softmax != source_softmax and name != LABEL_EMBEDDING
            if src.shape[1:] != tensor.shape[1:] or other_meaning:
                report.reinitialised.append(name)
                continue
            rows = tensor.clone()
            for i, j in row_of.items():
                rows[i] = src[j]
            if objectness and name != LABEL_EMBEDDING:
                for i in (i for i in range(len(names)) if i not in row_of):
                    rows[i] = src[0]
            if model.softmax and name != LABEL_EMBEDDING:
                rows[-1] = src[-1]  # the "no object" logit
            new_state[name] = rows
            report.class_rows.append(name)
        elif source[name].shape == tensor.shape:
            new_state[name] = source[name]
            report.loaded.append(name)
        else:
            report.reinitialised.append(name)
    report.dropped = sorted(set(source) - set(own))
    with torch.no_grad():
        model.load_state_dict({**own, **new_state})
    for line in report.lines(str(path)):
        log.info(line)
    return report
