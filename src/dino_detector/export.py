"""``python -m dino_detector.export``: a trained detector as ONNX (checked with onnxruntime after export) or
as a ``save_pretrained`` folder with its model card (``--format pretrained``).

  --dynamic           any batch size and image size (one size per call; see models/exportable.py)
  --with_postprocess  the graph also takes orig_sizes [B, 2] (h, w) and returns boxes [B, K, 4] (xyxy in
                      original pixels), scores [B, K] and category_ids [B, K] (K = --top_k)
Without post-processing the outputs are logits [B, Q, C] and boxes [B, Q, 4] (cx, cy, w, h in 0..1).
Inputs are RGB images in 0..1, resized as the model was trained (its config.json / checkpoint holds the sizes).
--format pretrained writes model.safetensors + config.json + README.md (the model card, filled from the
checkpoint's run config and the val_metrics_final.json beside it, or --metrics_file) into --output.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal, Optional

from .cli import parse_settings
from .config import Settings


@dataclass(frozen=True)
class ExportSettings(Settings):
    checkpoint: str  # dino_detector_*.pth checkpoint or save_pretrained folder
    weights: Literal["auto", "raw", "ema"] = "auto"  # a checkpoint's weights; auto: the deployable ones (EMA if kept)
    format: Literal["onnx", "pretrained"] = "onnx"  # onnx: an ONNX graph checked with onnxruntime; pretrained: a folder
    output: Optional[str] = None  # the .onnx file (default model.onnx), or the folder (default pretrained_model)
    metrics_file: Optional[str] = None  # metrics for the model card (default: val_metrics_final.json beside it)
    dynamic: bool = False  # dynamic batch, height and width
    with_postprocess: bool = False  # top-K boxes in original pixels, scores and category ids inside the graph
    top_k: int = 100  # --with_postprocess: detections per image
    height: int = 224  # example / fixed input height
    width: int = 298  # example / fixed input width


def main(argv: list[str] | None = None) -> int:
    args, _ = parse_settings(ExportSettings, argv, description=__doc__.splitlines()[0],
                             epilog="\n".join(__doc__.splitlines()[2:]))
    from .runtime.logging import setup_console
    setup_console()
    output = args.output or ("model.onnx" if args.format == "onnx" else "pretrained_model")
    from .backbones.vit import PretrainedUnavailableError
    from .models.detector import ObjectDetector
    from .models.exportable import export_onnx
    try:
        if args.format == "pretrained":
            return _export_pretrained(args, output)
        model = ObjectDetector.from_pretrained(args.checkpoint, args.weights)
        report = export_onnx(model, output, dynamic=args.dynamic, postprocess=args.with_postprocess, top_k=args.top_k,
                             example_size=(args.height, args.width))
    except (FileNotFoundError, ValueError, RuntimeError, PretrainedUnavailableError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    shapes = ", ".join("x".join(map(str, [b, 3, h, w])) for b, h, w in report["checked"])
    print(f"{output} ({model.weights} weights): onnxruntime matches PyTorch to {report['max_abs_diff']:.1e} on "
          f"{shapes}")
    return 0


def _export_pretrained(args: ExportSettings, output: str) -> int:
    import json
    from pathlib import Path

    from .models.detector import ObjectDetector
    from .models.persistence import load_detector_checkpoint

    checkpoint = Path(args.checkpoint)
    if checkpoint.is_dir():
        raise ValueError(f"{checkpoint} is already a folder; --format pretrained converts a checkpoint file")
    ckpt = load_detector_checkpoint(checkpoint)
    model = ObjectDetector.from_checkpoint_dict(ckpt, checkpoint, args.weights)
    metrics_file = Path(args.metrics_file) if args.metrics_file else checkpoint.parent / "val_metrics_final.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
    if args.metrics_file and metrics is None:
        raise FileNotFoundError(f"metrics file not found: {metrics_file}")
    model.save_pretrained(output, metrics, spec=ckpt.get("spec"))
    print(f"{output}: model.safetensors ({model.weights} weights), config.json, README.md (model card"
          + (f", metrics from {metrics_file})" if metrics else ", no metrics found)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
