"""A model made ready for inference: eval mode, LoRA merged, optional ``torch.compile`` with frozen weights
(the torch backend of deploy/backends.py, and the benchmarks)."""
from __future__ import annotations

import logging

import torch

from ..backbones.adapters import merge_lora_

log = logging.getLogger(__name__)


# inductor options of ``prepare_model(compile_model=True)``. Freezing folds the (now fixed) weights into the
# graph as constants, so inductor can pre-pack them for oneDNN and fold what depends only on them. It applies
# only under no_grad / inference_mode (as ``predict_files`` runs). Measured for `lightweight`, batch 1, eager
# and compiled interleaved in one process (BENCHMARKS.md): 512² on 2 CPU threads, 0 to 13 % faster over four
# runs, after a 20-60 s first call; 640² on an H200, 18.5 -> 12.5 ms.
COMPILE_OPTIONS = {"freezing": True}


def prepare_model(model: torch.nn.Module, device: torch.device, compile_model: bool = False) -> torch.nn.Module:
    """Eval mode on ``device`` with LoRA merged; with ``compile_model``, ``torch.compile`` with frozen weights.

    Compiled for the first input's shapes; a second shape recompiles once with dynamic shapes (torch's
    default), so one resolution gets the specialised graph. The frozen graph keeps the weights it was built
    with: compile only a model whose training is over."""
    model = model.to(device).eval()
    if merge_lora_(model):
        log.info("LoRA adapters merged into the backbone weights for inference")
    if compile_model:
        model.forward = torch.compile(model.forward, options=COMPILE_OPTIONS)
    return model
