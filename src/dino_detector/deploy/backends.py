"""Inference backends: one ``detect`` contract, three engines.

    torch        the model in eager PyTorch (``engine.inference.prepare_model``), post-processed as in training
    onnxruntime  the exported ONNX graph with the post-processing inside (``models.exportable``)
    openvino     the same graph converted to OpenVINO IR and compiled for the CPU

Every backend takes images already resized to the model's sizes ([3, h, w] floats 0..1, any mix of sizes)
with their original (height, width), and returns per image the detections above ``threshold``: boxes
[N, 4] xyxy in original pixels, scores [N] (best first) and category_ids [N] (the dataset's own ids), as
tensors. So ``predict``, the Python API, sliced inference and evaluation write the same files whichever
backend ran. Images of one size share a call (the graphs take one size per call: models/exportable.py).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..runtime.signals import kept_signal_stack

log = logging.getLogger(__name__)
BackendName = Literal["torch", "onnxruntime", "openvino"]
BACKENDS = ("torch", "onnxruntime", "openvino")


def group_by_size(images: list[torch.Tensor]) -> dict[tuple[int, int], list[int]]:
    """Positions of the images of each (h, w), in order of first appearance."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape[-2:]), []).append(i)
    return groups


class Backend:
    """What every backend shares: the model's classes and sizes, and the threshold / top-K cut."""

    name: str = ""

    def __init__(self, *, resize, category_ids: list[int], class_names: list[str], weights: str, int8: bool = False):
        self.resize, self.category_ids, self.class_names = resize, list(category_ids), list(class_names)
        self.weights, self.int8 = weights, int8

    @property
    def label(self) -> str:
        """e.g. 'openvino int8 (ema weights)'."""
        return f"{self.name}{' int8' if self.int8 else ''} ({self.weights} weights)"

    def detect(self, images: list[torch.Tensor], orig_sizes: list[tuple[int, int]], *, threshold: float = 0.5,
               top_k: int = 100) -> list[dict]:
        raise NotImplementedError


class TorchBackend(Backend):
    """The eager model (on its device), post-processed by ``models.postprocess``."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, device: torch.device | None = None, compile_model: bool = False):
        from ..engine.inference import prepare_model
        super().__init__(resize=model.resize, category_ids=model.category_ids, class_names=model.class_names,
                         weights=getattr(model, "weights", "raw"))
        self.device = device or next(model.parameters()).device
        self.model = prepare_model(model, self.device, compile_model)

    @torch.inference_mode()
    def detect(self, images, orig_sizes, *, threshold=0.5, top_k=100):
        from ..models.postprocess import postprocess
        outputs = self.model([image.to(self.device) for image in images])
        if self.device.type == "cuda":
            torch.cuda.synchronize()  # count the GPU work, not only its launch
        dets = postprocess(outputs, list(orig_sizes), self.category_ids, top_k, threshold,
                           **self.model.decode_options)
        return [{"boxes": d["boxes"].cpu(), "scores": d["scores"].cpu(), "category_ids": d["category_ids"].cpu()}
                for d in dets]


class GraphBackend(Backend):
    """A graph with the post-processing inside: (images [B, 3, h, w], orig_sizes [B, 2]) -> boxes [B, K, 4],
    scores [B, K] (sorted), category_ids [B, K]; the cut to ``top_k`` <= K and ``threshold`` happens here."""

    graph_top_k: int = 100

    def run_graph(self, images: np.ndarray, orig_sizes: np.ndarray) -> tuple[np.ndarray, ...]:
        raise NotImplementedError

    def detect(self, images, orig_sizes, *, threshold=0.5, top_k=100):
        if top_k > self.graph_top_k:
            raise ValueError(f"top_k {top_k} is more than the {self.graph_top_k} detections the exported graph "
                             "returns; open the backend with a larger top_k")
        results: list[dict | None] = [None] * len(images)
        for _, idx in group_by_size(images).items():
            batch = torch.stack([images[i] for i in idx]).float().numpy()
            sizes = np.array([orig_sizes[i] for i in idx], dtype=np.int64)
            boxes, scores, ids = self.run_graph(batch, sizes)
            for j, i in enumerate(idx):
                keep = scores[j, :top_k] > threshold
                results[i] = {"boxes": torch.from_numpy(np.ascontiguousarray(boxes[j, :top_k][keep])).float(),
                              "scores": torch.from_numpy(np.ascontiguousarray(scores[j, :top_k][keep])).float(),
                              "category_ids": torch.from_numpy(ids[j, :top_k][keep].astype(np.int64))}
        return results


class OnnxRuntimeBackend(GraphBackend):
    name = "onnxruntime"

    def __init__(self, path: str | Path, *, num_threads: int = 0, graph_top_k: int = 100, **meta):
        import onnxruntime as ort
        super().__init__(**meta)
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads or torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path, self.graph_top_k = Path(path), graph_top_k

    def run_graph(self, images, orig_sizes):
        return tuple(self.session.run(None, {"images": images, "orig_sizes": orig_sizes}))


class OpenVinoBackend(GraphBackend):
    """The IR compiled for the CPU with dynamic batch and image sizes; an input shape that comes again gets a
    graph compiled for it alone (``static_shapes`` of them at most, for the whole life of the backend).

    Why: with every size known, OpenVINO folds all that depends only on the shape (position embeddings,
    reference points, sampling normalisers, the reshapes around them) into constants and picks kernels for
    the exact sizes: a two-stage-lite fp32 graph at 512² ran 1.6x faster (BENCHMARKS.md, issue 24). Video
    frames, a camera, tiles and a folder of one camera's pictures repeat one shape. A shape compiles on its
    second call, not its first, so a folder of all-different sizes never pays a compile (about 1 to 3 s).
    Quantised graphs keep their dynamic shapes (``static_model``)."""

    name = "openvino"

    def __init__(self, path: str | Path, *, num_threads: int = 0, graph_top_k: int = 100, static_shapes: int = 4,
                 **meta):
        import openvino as ov
        super().__init__(**meta)
        # f32 inference: OpenVINO would run fp32 graphs in bf16 on CPUs that have bf16 units, which changes the
        # detections; quantised (int8) graphs keep their int8 ops either way
        self.config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                       "INFERENCE_NUM_THREADS": num_threads or torch.get_num_threads()}
        self.core = ov.Core()
        self.path, self.graph_top_k = Path(path), graph_top_k
        if static_shapes < 0:
            raise ValueError(f"static_shapes must be >= 0 (0: always the dynamic graph), got {static_shapes}")
        self.static_shapes = 0 if self.int8 else static_shapes  # see static_model
        self.request = self._compile(str(path)).create_infer_request()  # the dynamic graph
        self.calls: dict[tuple[int, ...], int] = {}  # input shape -> calls so far
        self.static: dict[tuple[int, ...], object] = {}  # input shape -> its own infer request

    def _compile(self, model):
        with kept_signal_stack():  # the CPU plugin repoints the thread's signal stack (runtime/signals.py)
            return self.core.compile_model(model, "CPU", self.config)

    def _request(self, shape: tuple[int, ...]):
        if shape in self.static:
            return self.static[shape]
        self.calls[shape] = self.calls.get(shape, 0) + 1
        if self.calls[shape] < 2 or len(self.static) >= self.static_shapes:
            return self.request
        self.static[shape] = self._compile(static_model(self.core, self.path, shape)).create_infer_request()
        log.info("openvino: compiled %s for input %s", self.path.name, "x".join(map(str, shape)))
        return self.static[shape]

    def run_graph(self, images, orig_sizes):
        request = self._request(tuple(images.shape))
        result = request.infer({"images": images, "orig_sizes": orig_sizes})
        return tuple(np.asarray(result[name]) for name in ("boxes", "scores", "category_ids"))


def static_model(core, path: Path, shape: tuple[int, ...]):
    """The IR at ``path`` with its inputs fixed to images ``shape`` [B, 3, H, W] (the CPU plugin then folds
    what depends on the shape alone). Not for quantised graphs: with fixed shapes their FakeQuantize nodes on
    the folded parts fail to compile (OpenVINO 2026.4), and with those dropped they ran no faster than with
    dynamic shapes (BENCHMARKS.md, issue 24)."""
    model = core.read_model(str(path))
    model.reshape({"images": list(shape), "orig_sizes": [shape[0], 2]})
    return model
