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

import argparse
import sys

from .engine.logging import setup_console


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="\n".join(__doc__.splitlines()[2:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="dino_detector_*.pth checkpoint or save_pretrained folder")
    parser.add_argument("--format", default="onnx", choices=["onnx", "pretrained"])
    parser.add_argument("--output", help="the .onnx file (default model.onnx), or the folder for pretrained "
                        "(default pretrained_model)")
    parser.add_argument("--metrics_file", help="metrics for the model card (default: val_metrics_final.json "
                        "beside the checkpoint)")
    parser.add_argument("--dynamic", action="store_true", help="dynamic batch, height and width")
    parser.add_argument("--with_postprocess", action="store_true", help="top-K boxes in pixels in the graph")
    parser.add_argument("--top_k", type=int, default=100)
    parser.add_argument("--height", type=int, default=224, help="example / fixed input height")
    parser.add_argument("--width", type=int, default=298, help="example / fixed input width")
    args = parser.parse_args(argv)
    setup_console()
    args.output = args.output or ("model.onnx" if args.format == "onnx" else "pretrained_model")
    from .backbones.dino import PretrainedUnavailableError
    from .models.detector import DINOv2ObjectDetector
    from .models.exportable import export_onnx
    try:
        if args.format == "pretrained":
            return _export_pretrained(args)
        model = DINOv2ObjectDetector.from_pretrained(args.checkpoint)
        report = export_onnx(model, args.output, args.dynamic, args.with_postprocess, args.top_k,
                             (args.height, args.width))
    except (FileNotFoundError, ValueError, RuntimeError, PretrainedUnavailableError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    shapes = ", ".join("x".join(map(str, [b, 3, h, w])) for b, h, w in report["checked"])
    print(f"{args.output}: onnxruntime matches PyTorch to {report['max_abs_diff']:.1e} on {shapes}")
    return 0


def _export_pretrained(args) -> int:
    import json
    from pathlib import Path

    from .engine.checkpoint import load_checkpoint
    from .models.detector import DINOv2ObjectDetector

    checkpoint = Path(args.checkpoint)
    if checkpoint.is_dir():
        raise ValueError(f"{checkpoint} is already a folder; --format pretrained converts a checkpoint file")
    ckpt = load_checkpoint(checkpoint)
    model = DINOv2ObjectDetector.from_checkpoint_dict(ckpt, checkpoint)
    metrics_file = Path(args.metrics_file) if args.metrics_file else checkpoint.parent / "val_metrics_final.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
    if args.metrics_file and metrics is None:
        raise FileNotFoundError(f"metrics file not found: {metrics_file}")
    model.save_pretrained(args.output, metrics, ckpt.get("config"))
    print(f"{args.output}: model.safetensors, config.json, README.md (model card"
          + (f", metrics from {metrics_file})" if metrics else ", no metrics found)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
