"""``open_backend``: a checkpoint (or ``save_pretrained`` folder) ready to run through torch, onnxruntime or
OpenVINO, fp32 or INT8, exporting, converting and quantising on first use (cached: deploy/artifacts.py)."""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path


from .artifacts import artifact_path, is_current, source_record, write_record
from .backends import BACKENDS, Backend, OnnxRuntimeBackend, OpenVinoBackend, TorchBackend

log = logging.getLogger(__name__)
EXPORT_TOP_K = 100  # detections per image the exported graphs keep (a larger --top_k exports again)


def _missing(package: str, extra: str) -> RuntimeError:
    return RuntimeError(f"this backend needs {package}: pip install 'dino_detector[{extra}]'")


def _check_backend(backend: str, int8: bool) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if int8 and backend == "torch":
        raise ValueError("int8 runs through an exported graph: choose backend onnxruntime or openvino")
    modules = {"onnxruntime": ("onnxruntime", "export"), "openvino": ("openvino", "openvino")}
    if backend in modules:
        import importlib.util
        if importlib.util.find_spec(modules[backend][0]) is None:
            raise _missing(*modules[backend])


def onnx_graph(model, checkpoint: Path, *, top_k: int = EXPORT_TOP_K) -> Path:
    """The fp32 ONNX graph of ``model`` (loaded from ``checkpoint``), exported and checked once."""
    from ..models.exportable import export_onnx
    path = artifact_path(checkpoint, "onnx", weights=model.weights, top_k=top_k)
    record = {**source_record(checkpoint), "weights": model.weights, "top_k": top_k}
    if not is_current(path, record):
        start = time.perf_counter()
        log.info("exporting %s to ONNX (once; reused while the checkpoint is unchanged)", checkpoint)
        export_onnx(model, path, dynamic=True, postprocess=True, top_k=top_k)
        write_record(path, record)
        log.info("wrote %s in %.0f s", path, time.perf_counter() - start)
    return path


def openvino_ir(onnx_path: Path, checkpoint: Path, *, weights: str, top_k: int, tag: str = "") -> Path:
    """The OpenVINO IR (.xml + .bin) converted from an ONNX graph (fp32, or the QDQ INT8 one), once."""
    import openvino as ov
    path = artifact_path(checkpoint, "openvino", weights=weights, top_k=top_k, tag=tag)
    record = {**source_record(checkpoint), "weights": weights, "top_k": top_k, "from": onnx_path.name,
              "from_mtime_ns": onnx_path.stat().st_mtime_ns}
    if not is_current(path, record):
        # fp32 weights: the default fp16 compression moves scores by ~1e-3
        ov.save_model(ov.convert_model(str(onnx_path)), str(path), compress_to_fp16=False)
        write_record(path, record)
        log.info("wrote %s (OpenVINO IR)", path)
    return path


def int8_graph(fp32: Path, fmt: str, checkpoint: Path, *, weights: str, top_k: int, resize,
               calibration_images: str | None, tag: str = "int8") -> Path:
    """The INT8 file of ``fp32`` (ONNX: onnxruntime's QDQ quantisation; IR: NNCF, tag "int8-nncf"),
    quantised on ``calibration_images`` (needed the first time, and whenever they change)."""
    from .quantize import calibration_inputs, quantize_onnx, quantize_openvino
    path = artifact_path(checkpoint, fmt, weights=weights, top_k=top_k, tag=tag)
    if calibration_images is None:  # open_backend checked that it exists
        return path
    record = {**source_record(checkpoint), "weights": weights, "top_k": top_k,
              "calibration_images": str(Path(calibration_images).resolve())}
    if not is_current(path, record):
        inputs = calibration_inputs(calibration_images, resize)
        start = time.perf_counter()
        log.info("quantising %s to INT8 on %d calibration images", fp32.name, len(inputs))
        (quantize_onnx if fmt == "onnx" else quantize_openvino)(fp32, path, inputs)
        write_record(path, record)
        log.info("wrote %s in %.0f s", path, time.perf_counter() - start)
    return path


INT8_METHODS = ("qdq", "nncf")


def open_backend(checkpoint: str | Path, backend: str = "torch", *, weights: str = "auto", device: str = "cpu",
                 int8: bool = False, calibration_images: str | None = None, top_k: int = EXPORT_TOP_K,
                 compile_model: bool = False, num_threads: int = 0, int8_method: str = "qdq") -> Backend:
    """The detector of ``checkpoint`` (a checkpoint file, a ``save_pretrained`` folder or a training run's
    folder: its best checkpoint) behind ``backend`` ("torch", "onnxruntime" or "openvino").

    ``int8`` (onnxruntime / openvino): the quantised graph, made from ``calibration_images`` on first use;
    ``int8_method`` "qdq": onnxruntime's static quantisation, run by either backend (OpenVINO runs a QDQ
    graph with int8 kernels), or "nncf" (openvino only): NNCF's quantisation of the IR. ``top_k``: the most
    detections per image a call may ask for. Raises ValueError for a wrong choice and RuntimeError naming
    the extra to install when the backend's package is missing."""
    from ..models.detector import ObjectDetector
    from ..models.persistence import model_path
    from ..runtime.device import resolve_device
    _check_backend(backend, int8)
    if int8_method not in INT8_METHODS or (int8_method == "nncf" and backend != "openvino"):
        raise ValueError(f"int8_method must be qdq, or nncf with the openvino backend; got {int8_method!r}")
    checkpoint = model_path(checkpoint)  # a run's folder: its best checkpoint, and the exports beside it
    model = ObjectDetector.from_pretrained(checkpoint, weights)
    if backend == "torch":
        return TorchBackend(model, resolve_device(device), compile_model)
    if resolve_device(device).type != "cpu":
        log.warning("the %s backend runs on the CPU here; use backend torch for the GPU", backend)
    top_k = max(top_k, EXPORT_TOP_K)
    made = dict(checkpoint=checkpoint, weights=model.weights, top_k=top_k)
    if int8 and calibration_images is None:  # before any export: say what is missing at once
        fmt, tag = ("openvino", "int8-nncf") if int8_method == "nncf" else ("onnx", "int8")
        if not artifact_path(checkpoint, fmt, weights=model.weights, top_k=top_k, tag=tag).is_file():
            raise ValueError(f"no INT8 model for {checkpoint} yet: give calibration_images (a folder of your own "
                             "images, e.g. the training images) to quantise it")
    path = onnx_graph(model, checkpoint, top_k=top_k)
    if int8 and int8_method == "qdq":
        path = int8_graph(path, "onnx", **made, resize=model.resize, calibration_images=calibration_images)
    if backend == "openvino":
        path = openvino_ir(path, **made, tag="int8" if int8 and int8_method == "qdq" else "")
        if int8 and int8_method == "nncf":
            path = int8_graph(path, "openvino", **made, resize=model.resize, calibration_images=calibration_images,
                              tag="int8-nncf")
    meta = {"resize": model.resize, "category_ids": model.category_ids, "class_names": model.class_names,
            "weights": model.weights, "int8": int8}
    cls = OnnxRuntimeBackend if backend == "onnxruntime" else OpenVinoBackend
    return cls(path, num_threads=num_threads, graph_top_k=top_k, **meta)


def copy_artifact(path: Path, output: str | Path) -> Path:
    """Copy an exported file (with the .bin of an IR) to ``output``."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, output)
    if path.suffix == ".xml":
        shutil.copyfile(path.with_suffix(".bin"), output.with_suffix(".bin"))
    return output


def backend_path(backend: Backend) -> Path | None:
    return getattr(backend, "path", None)

