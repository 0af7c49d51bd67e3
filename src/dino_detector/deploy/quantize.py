"""INT8 post-training quantisation with the backends' own tools, calibrated on the user's images.

    qdq   ``onnxruntime.quantization.quantize_static``: QDQ, int8 weights per output channel, uint8
          activations from min / max ranges over the calibration images, the Conv / MatMul / Gemm ops only.
          onnxruntime runs it, and OpenVINO runs the same graph converted (its int8 kernels).
    nncf  NNCF's ``nncf.quantize`` on the IR (``nncf.ModelType.TRANSFORMER``), OpenVINO only. On a
          two-stage BCCD model it lost 0.021 AP where qdq lost nothing (BENCHMARKS.md), so qdq is the default.

Calibration images are read and resized exactly as ``predict`` does (the model's sizes), one per call, so
the activation ranges are those of real inputs.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..runtime.signals import kept_signal_stack

log = logging.getLogger(__name__)
MAX_CALIBRATION_IMAGES = 300  # NNCF's default subset; ranges stop moving well before that on one dataset
MIN_CALIBRATION_IMAGES = 1


def calibration_inputs(folder: str | Path, resize, limit: int = MAX_CALIBRATION_IMAGES) -> list[dict]:
    """[{"images": [1, 3, h, w] float32, "orig_sizes": [1, 2] int64}] for up to ``limit`` images of ``folder``
    (sorted names, so the same folder gives the same set)."""
    from ..data.images import ImageReadError, load_image, scan_images, to_tensor_image
    from ..data.transforms import resize_for_inference

    paths, _ = scan_images(folder, recursive=True)
    inputs = []
    for path in paths:
        if len(inputs) >= limit:
            break
        try:
            image = to_tensor_image(load_image(path))
        except ImageReadError as err:
            log.warning("calibration: skipped %s: %s", path, err)
            continue
        resized = resize_for_inference(image, resize)
        inputs.append({"images": resized[None].float().numpy(),
                       "orig_sizes": np.array([image.shape[-2:]], dtype=np.int64)})
    if len(inputs) < MIN_CALIBRATION_IMAGES:
        raise ValueError(f"no readable calibration images in {folder}")
    return inputs


def quantize_onnx(fp32: Path, output: Path, inputs: list[dict]) -> None:
    """``output``: the INT8 (QDQ) version of the ONNX graph ``fp32``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(inputs)

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(fp32), str(output), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    # 7-bit weights: without VNNI (AVX2 CPUs), u8 x s8 products saturate the 16-bit sums
                    reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=["Conv", "MatMul", "Gemm"])


def quantize_openvino(fp32_xml: Path, output: Path, inputs: list[dict]) -> None:
    """``output``: the NNCF INT8 version of the OpenVINO IR ``fp32_xml``."""
    try:
        import nncf
    except ImportError:
        raise RuntimeError("INT8 for OpenVINO needs NNCF: pip install 'dino_detector[openvino]'") from None
    import openvino as ov

    model = ov.Core().read_model(str(fp32_xml))
    with kept_signal_stack():  # NNCF compiles the model on OpenVINO's CPU plugin (runtime/signals.py)
        quantized = nncf.quantize(model, nncf.Dataset(inputs), model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=len(inputs))
    ov.save_model(quantized, str(output), compress_to_fp16=False)
