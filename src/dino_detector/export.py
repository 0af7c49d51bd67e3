"""``python -m dino_detector.export``: a trained detector as ONNX (checked with onnxruntime after export), as
OpenVINO IR (``--format openvino``), INT8 (``--int8``), or as a ``save_pretrained`` folder with its model card
(``--format pretrained``).

  --dynamic           any batch size and image size (one size per call; see models/exportable.py)
  --with_postprocess  the graph also takes orig_sizes [B, 2] (h, w) and returns boxes [B, K, 4] (xyxy in
                      original pixels), scores [B, K] and category_ids [B, K] (K = --top_k)
Without post-processing the outputs are logits [B, Q, C] and boxes [B, Q, 4] (cx, cy, w, h in 0..1).
Inputs are RGB images in 0..1, resized as the model was trained (its config.json / checkpoint holds the sizes).
--format openvino writes model.xml + model.bin: the post-processed dynamic graph converted by OpenVINO
(fp32 weights). --int8 --calibration_images DIR quantises the graph on your own images: onnxruntime's
static quantisation (QDQ; --format openvino converts that graph, which OpenVINO runs in int8), or with
--int8_method nncf (--format openvino) NNCF's; with --val_annotations (and --val_images) it also scores the fp32
and the INT8 graph on that annotated set and prints the AP change. These graphs take images and orig_sizes
like --with_postprocess and are kept beside the checkpoint too, where predict --backend finds them.
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
    checkpoint: str  # dino_detector_*.pth checkpoint, save_pretrained folder, or a run's folder (its best checkpoint)
    weights: Literal["auto", "raw", "ema"] = "auto"  # a checkpoint's weights; auto: the deployable ones (EMA if kept)
    format: Literal["onnx", "openvino", "pretrained"] = "onnx"  # onnx: ONNX checked with onnxruntime; openvino: IR; pretrained: a folder
    output: Optional[str] = None  # the file (default model.onnx, model.xml, model_int8.*) or folder (pretrained_model)
    int8: bool = False  # onnx / openvino: INT8 post-training quantisation on --calibration_images
    calibration_images: Optional[str] = None  # --int8: a folder of your own images (e.g. the training images)
    int8_method: Literal["qdq", "nncf"] = "qdq"  # qdq: onnxruntime static quantisation (run by either backend); nncf: NNCF (openvino)
    val_images: Optional[str] = None  # --int8: images of --val_annotations (default: the folder the file names)
    val_annotations: Optional[str] = None  # --int8: score fp32 and INT8 on this annotated set (COCO JSON, VOC, YOLO)
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
    suffix = {"onnx": ".onnx", "openvino": ".xml"}.get(args.format, "")
    output = args.output or ("pretrained_model" if args.format == "pretrained" else
                             f"model{'_int8' if args.int8 else ''}{suffix}")
    from .backbones.vit import PretrainedUnavailableError
    from .models.detector import ObjectDetector
    from .models.exportable import export_onnx
    try:
        if args.format == "pretrained":
            return _export_pretrained(args, output)
        if args.int8 or args.format == "openvino":
            return _export_deployable(args, output)
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


def _export_deployable(args: ExportSettings, output: str) -> int:
    """OpenVINO IR and INT8 graphs, made through the deployment cache and copied to ``output``."""
    from .deploy.loader import backend_path, copy_artifact, open_backend

    if args.int8 and not args.calibration_images:
        raise ValueError("--int8 needs --calibration_images DIR (a folder of your own images)")
    backend = "onnxruntime" if args.format == "onnx" else "openvino"
    deployed = open_backend(args.checkpoint, backend, weights=args.weights, int8=args.int8,
                            calibration_images=args.calibration_images, top_k=args.top_k,
                            int8_method=args.int8_method)
    written = copy_artifact(backend_path(deployed), output)
    print(f"{written} ({deployed.label}; inputs images [B, 3, H, W] 0..1 and orig_sizes [B, 2])")
    if args.int8 and args.val_annotations:
        from .analysis.run_eval import evaluate_model
        aps = {}
        for int8 in (False, True):
            evaluation = evaluate_model(args.checkpoint, images=args.val_images, annotations=args.val_annotations,
                                        weights=args.weights, backend=backend, int8=int8,
                                        calibration_images=args.calibration_images, show_table=False,
                                        int8_method=args.int8_method)
            aps["int8" if int8 else "fp32"] = {k: evaluation.metrics[k] for k in ("AP", "AP50", "APs")}
        change = aps["int8"]["AP"] - aps["fp32"]["AP"]
        print(f"{backend} on {args.val_annotations}: AP fp32 {aps['fp32']['AP']:.4f}, int8 {aps['int8']['AP']:.4f} "
              f"({change:+.4f}); AP50 {aps['fp32']['AP50']:.4f} -> {aps['int8']['AP50']:.4f}")
        import json
        from pathlib import Path
        Path(written).with_name(Path(written).stem + "_accuracy.json").write_text(
            json.dumps({"backend": backend, "annotations": args.val_annotations, **aps, "AP_change": change}, indent=1))
    return 0


def _export_pretrained(args: ExportSettings, output: str) -> int:
    import json
    from pathlib import Path

    from .models.detector import ObjectDetector
    from .models.persistence import load_detector_checkpoint, model_path

    checkpoint = model_path(args.checkpoint)
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
