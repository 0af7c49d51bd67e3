"""ONNX export of a detector: the graph, the export with dynamic batch / height / width, and a check of the
exported file with onnxruntime against PyTorch.

One call of the graph takes images of one size. Images of different sizes are separate calls (``predict``
groups them): the ViT's position embeddings follow each image's own patch grid, so padding a small image
into a larger canvas would change its detections, which is the batching bug this library avoids.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .postprocess import topk_detections

log = logging.getLogger(__name__)
OPSET = 18
MAX_SIDE = 4096  # upper bound of the dynamic height / width
PROBE_SIZES = ((1, 224, 298), (3, 161, 107))  # (batch, height, width) checked after a dynamic export
TOLERANCE = 1e-3  # raw outputs on random inputs: fp32 reordering reached 1.3e-4 (tiny, full suite); tests hold detections to 1e-4
QUIET_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx")


class InferenceGraph(nn.Module):
    """images [B, 3, H, W] float 0..1 -> (logits [B, Q, C(+1)], boxes [B, Q, 4] cx cy w h relative).
    With ``postprocess``: (images, orig_sizes [B, 2] (h, w) int64) -> (boxes [B, K, 4] xyxy in original
    pixels, scores [B, K], category_ids [B, K] int64), the top K = min(top_k, Q * C) per image."""

    def __init__(self, detector: nn.Module, postprocess: bool = False, top_k: int = 100):
        super().__init__()
        self.detector, self.postprocess, self.top_k = detector, postprocess, top_k
        self.register_buffer("category_ids", torch.tensor(detector.category_ids, dtype=torch.int64),
                             persistent=False)

    def forward(self, images: torch.Tensor, orig_sizes: torch.Tensor | None = None):
        out = self.detector(images)
        if not self.postprocess:
            return out["pred_logits"], out["pred_boxes"]
        boxes, scores, labels = topk_detections(out, orig_sizes, self.top_k, **self.detector.decode_options)
        return boxes, scores, self.category_ids[labels]

    def names(self) -> tuple[list[str], list[str]]:
        if self.postprocess:
            return ["images", "orig_sizes"], ["boxes", "scores", "category_ids"]
        return ["images"], ["logits", "boxes"]

    def example(self, batch: int, height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(seed)
        images = torch.rand(batch, 3, height, width, generator=g)
        if not self.postprocess:
            return (images,)
        return images, torch.tensor([[height * 2, width * 2]] * batch, dtype=torch.int64)  # as if resized by 1/2


def prepare_for_export(model: nn.Module) -> nn.Module:
    """An eval-mode copy with LoRA merged into the weights (no adapter branch left in the graph)."""
    from ..backbones.adapters import merge_lora_

    model = copy.deepcopy(model).eval().float()
    merge_lora_(model)
    return model


def export_onnx(model: nn.Module, output: str | Path, dynamic: bool = True, postprocess: bool = False,
                top_k: int = 100, example_size: tuple[int, int] = (224, 298)) -> dict:
    """Write ``output`` and check it with onnxruntime on inputs of other batch sizes and image sizes
    (dynamic) or on the export size; returns {"max_abs_diff": ..., "checked": [(b, h, w), ...]}.
    Raises RuntimeError when onnxruntime and PyTorch disagree by more than ``TOLERANCE``."""
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401  (torch.onnx's exporter)
    except ImportError as err:
        raise RuntimeError(f"ONNX export needs onnx, onnxscript and onnxruntime ({err}); "
                           "pip install 'dino_detector[export]'") from None
    graph = InferenceGraph(prepare_for_export(model), postprocess, top_k).eval()
    inputs, outputs = graph.names()
    example = graph.example(2, *example_size)  # batch 2: export would fix a batch of 1 as a constant
    dynamic_shapes = None
    if dynamic:
        batch = torch.export.Dim("batch", min=1, max=1024)
        height = torch.export.Dim("height", min=2, max=MAX_SIDE)
        width = torch.export.Dim("width", min=2, max=MAX_SIDE)
        dynamic_shapes = {"images": {0: batch, 2: height, 3: width}}
        if postprocess:
            dynamic_shapes["orig_sizes"] = {0: batch}
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    for name in QUIET_LOGGERS:  # the exporter's optimiser logs every folded constant at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    with torch.no_grad():
        torch.onnx.export(graph, example, str(output), dynamo=True, opset_version=OPSET, input_names=inputs,
                          output_names=outputs, dynamic_shapes=dynamic_shapes, external_data=False, verbose=False)
    probes = PROBE_SIZES if dynamic else ((2, *example_size),)
    diff = max(compare_with_onnxruntime(graph, output, graph.example(*size, seed=i + 1))
               for i, size in enumerate(probes))
    if diff > TOLERANCE:
        raise RuntimeError(f"{output}: onnxruntime differs from PyTorch by {diff:.2e} (> {TOLERANCE})")
    log.info("exported %s (%.1f MB); onnxruntime matches PyTorch to %.1e on %s", output,
             output.stat().st_size / 2**20, diff, ", ".join(f"{b}x3x{h}x{w}" for b, h, w in probes))
    return {"max_abs_diff": diff, "checked": [list(p) for p in probes]}


def compare_with_onnxruntime(graph: nn.Module, path: str | Path, inputs: tuple[torch.Tensor, ...]) -> float:
    """Largest difference between the ONNX file run by onnxruntime and ``graph`` in PyTorch: absolute for
    values up to 1 (logits, relative boxes, scores), relative above (boxes in pixels)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    got = session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})
    with torch.no_grad():
        want = graph(*inputs)
    return max(float((np.abs(g.astype(np.float64) - w.double().numpy()) / np.maximum(1.0, np.abs(w.double().numpy())))
                     .max()) for g, w in zip(got, want))
