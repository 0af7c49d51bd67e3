"""``python -m dino_detector.analyze``: reports on a detector's results. Every mode writes report.md and a
self-contained report.html (images embedded) into --output_dir.

  --metrics_file val_metrics_final.json                   metrics tables and bar charts
  --predictions_file P.json --test_images DIR             confidence histogram, class distribution, drawn
      [--annotations GT] [--num_visualizations N]         images (true vs false positives with --annotations)
      [--confidence_threshold T]
  --run_eval --model_path CKPT --val_images DIR           evaluate, then all of the above plus precision-recall
      --val_annotations GT                                curves per class and the confusion heat map
  --compare A.json B.json --labels ours yolo              one evaluator for every COCO results file
      --annotations GT
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from .cli import parse_settings
from .config import Settings


@dataclass(frozen=True)
class AnalyzeSettings(Settings):
    metrics_file: Optional[str] = None  # a metrics JSON written by train or analyze --run_eval
    predictions_file: Optional[str] = None  # COCO results JSON (val_predictions_final.json, testdev_predictions_...)
    test_images: Optional[str] = None  # the folder the predictions' images are in
    annotations: Optional[str] = None  # ground truth (COCO JSON, VOC or YOLO folder) for --predictions_file / --compare
    num_visualizations: int = 10  # images to draw
    confidence_threshold: float = 0.5  # score of the drawn boxes and the class counts
    run_eval: bool = False  # evaluate --model_path on --val_images / --val_annotations
    model_path: Optional[str] = None  # a checkpoint (dino_detector_*.pth), save_pretrained folder or run's folder (its best)
    weights: Literal["auto", "raw", "ema"] = "auto"  # a checkpoint's weights; auto: the deployable ones (EMA if kept)
    data: Optional[str] = None  # --run_eval: a dataset folder (as train --data); its validation split, else its test split
    val_images: Optional[str] = None  # --run_eval: the validation images
    val_annotations: Optional[str] = None  # --run_eval: the validation annotations (COCO JSON, VOC or YOLO folder)
    data_format: Literal["auto", "coco", "voc", "yolo", "hf"] = "auto"  # annotation format; auto: told apart by the path
    batch_size: int = 4  # --run_eval: images per model call
    device: Literal["auto", "cpu", "cuda"] = "auto"  # --run_eval: where to run; auto: CUDA when available
    backend: Literal["torch", "onnxruntime", "openvino"] = "torch"  # --run_eval: as predict --backend
    int8: bool = False  # --run_eval: the INT8 graph of --backend (as predict --int8)
    calibration_images: Optional[str] = None  # --run_eval --int8: the quantisation's images, the first time
    slice: int = 0  # --run_eval: sliced inference with tiles of this many pixels (as predict --slice)
    slice_overlap: float = 0.2  # --slice: fraction of a tile side that neighbouring tiles share
    slice_merge: Literal["nms", "nmm"] = "nms"  # --slice: merge by non-maximum suppression or merging
    slice_match: Literal["iou", "ios"] = "iou"  # --slice: overlap of two boxes: IoU, or intersection over the smaller one
    slice_prefer_whole: bool = False  # --slice: objects the whole image shows are taken from it; tiles add the rest
    score_threshold: float = 0.5  # score cut-off of precision / recall / F1 and the confusion matrix
    compare: Optional[list[str]] = None  # COCO results files to compare on --annotations
    labels: Optional[list[str]] = None  # a name per --compare file (default: the file names)
    output_dir: str = "outputs/analysis"  # folder for report.md, report.html and the charts


def main(argv: list[str] | None = None) -> int:
    lines = __doc__.splitlines()
    args, _ = parse_settings(AnalyzeSettings, argv, description=lines[0], epilog="\n".join(lines[3:]))
    from .runtime.logging import setup_console
    setup_console()
    modes = [bool(args.metrics_file or args.predictions_file), args.run_eval, bool(args.compare)]
    if sum(modes) != 1:
        _usage("choose one mode: --metrics_file and/or --predictions_file, --run_eval, or --compare")
    from .backbones.vit import PretrainedUnavailableError
    from .data.images import ImageReadError
    try:
        if args.compare:
            report = _compare(args)
        elif args.run_eval:
            report = _run_eval(args)
        else:
            report = _files(args)
    except UsageError as err:
        _usage(str(err))
    except (FileNotFoundError, ValueError, RuntimeError, ImageReadError, PretrainedUnavailableError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    md, htm = report.write()
    print(f"report -> {md}, {htm}")
    return 0


class UsageError(Exception):
    """Flags that do not make a mode (exit code 2, like any bad flag)."""


def _usage(message: str):
    """Exit 2 with one line, as a bad flag does."""
    print(f"error: {message}  (--help lists every flag)", file=sys.stderr)
    raise SystemExit(2)


def _report(args, title: str):
    from .analysis.report import Report
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    return Report(title, Path(args.output_dir))


def _compare(args):
    from .analysis.compare import compare, comparison_cells, comparison_chart, comparison_table
    if not args.annotations:
        raise UsageError("--compare needs --annotations (the ground truth every results file is scored against)")
    rows = compare(args.annotations, args.compare, args.labels, args.score_threshold)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = comparison_table(rows)
    (out / "comparison.md").write_text(table + "\n")
    (out / "comparison.json").write_text(json.dumps(rows, indent=2))
    comparison_chart(rows, out / "comparison.png")
    print(table)
    print(f"-> {out / 'comparison.md'}, {out / 'comparison.png'}, {out / 'comparison.json'}")
    report = _report(args, "Model comparison")
    report.text(f"Every results file scored against {args.annotations} by the same evaluator "
                f"(threshold metrics at score >= {args.score_threshold}).")
    header, cells, _ = comparison_cells(rows)
    report.table(header, cells)
    report.figure(out / "comparison.png", "Model comparison")
    return report


def _files(args):
    """--metrics_file and/or --predictions_file."""
    from .analysis.sections import Predictions, annotated_files, folder_files, metrics_section, predictions_section
    out = Path(args.output_dir)
    report = _report(args, "Detection analysis")
    if args.metrics_file:
        path = Path(args.metrics_file)
        if not path.is_file():
            raise FileNotFoundError(f"metrics file not found: {path}")
        metrics = json.loads(path.read_text())
        if not isinstance(metrics, dict) or "AP" not in metrics:
            raise ValueError(f"{path} is not a metrics JSON (no 'AP' entry)")
        report.text(f"Metrics file: {path}")
        metrics_section(report, metrics, out)
    if args.predictions_file:
        if not args.test_images:
            raise UsageError("--predictions_file needs --test_images (the folder its images are in)")
        from .analysis.compare import load_results
        gt = None
        if args.annotations:
            gt, images_dir = _ground_truth(args.test_images, args.annotations, args.data_format)
            files = annotated_files(gt, images_dir)
        else:
            files = folder_files(args.test_images)
        results = load_results(args.predictions_file, gt)
        names = _class_names(results, gt, args.model_path)
        report.text(f"Predictions: {args.predictions_file}; images: {args.test_images}"
                    + (f"; ground truth: {args.annotations}" if gt is not None else ""))
        predictions_section(report, Predictions(results, files, names, gt), out, args.num_visualizations,
                            args.confidence_threshold)
    return report


def _run_eval(args):
    from .analysis.run_eval import evaluate_model
    from .analysis.sections import Predictions, annotated_files, metrics_section, predictions_section
    images, annotations = args.val_images, args.val_annotations
    if args.data and not annotations:
        images, annotations = _layout_split(args.data)
    if not (args.model_path and annotations):
        raise UsageError("--run_eval needs --model_path and --val_annotations (and --val_images for COCO JSON), "
                         "or --data with the dataset's folder")
    from .deploy.slicing import slicing_from_flags
    slicing = slicing_from_flags(args)
    ev = evaluate_model(args.model_path, images=images, annotations=annotations, data_format=args.data_format,
                        score_threshold=args.score_threshold, batch_size=args.batch_size, device=args.device,
                        weights=args.weights, backend=args.backend, int8=args.int8,
                        calibration_images=args.calibration_images, slicing=slicing)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "val_metrics.json").write_text(json.dumps(ev.metrics, indent=2))
    (out / "val_predictions.json").write_text(json.dumps(ev.results))
    report = _report(args, "Detection analysis")
    report.text(f"Model: {args.model_path}; data: {ev.dataset.name}; metrics: val_metrics.json; "
                "predictions: val_predictions.json")
    metrics_section(report, ev.metrics, out)
    gt = ev.dataset.coco
    evaluated = set(ev.dataset.ids)
    files = {i: f for i, f in annotated_files(gt, ev.dataset.images_dir).items() if i in evaluated}
    names = {c["id"]: c["name"] for c in gt.dataset["categories"]}
    predictions_section(report, Predictions(ev.results, files, names, gt), out, args.num_visualizations,
                        args.confidence_threshold)
    return report


def _layout_split(folder: str) -> tuple[str | None, str]:
    """(images, annotations) of a dataset folder's validation split, else its test split."""
    from .data.layout import detect_layout
    layout = detect_layout(folder)
    split = next((s for s in ("val", "test") if s in layout.splits), None)
    if split is None:
        raise ValueError(f"{folder} ({layout.kind}) has no validation or test split to evaluate on")
    print(f"dataset {folder}: {layout.kind}; evaluating its {split} split")
    return layout.splits[split].images, layout.splits[split].annotations


def _ground_truth(images: str, annotations: str, data_format: str):
    """(pycocotools COCO, image folder): VOC / YOLO sources name their own image folder."""
    from .data.build import open_source
    source = open_source(images, annotations, data_format, "val")
    return source.coco, source.images


def _class_names(results: list[dict], gt, model_path: str | None) -> dict[int, str]:
    """Category id -> name: from the annotations, the entries' own 'category_name', or the model's metadata;
    ids the sources do not name are shown as 'class <id>'."""
    names: dict[int, str] = {}
    if gt is not None:
        names = {c["id"]: c["name"] for c in gt.dataset["categories"]}
    elif model_path:
        from .models.persistence import saved_model_config
        model_cfg = saved_model_config(model_path)
        names = dict(zip(model_cfg.category_ids, model_cfg.class_names))
    for r in results:
        if "category_name" in r:
            names.setdefault(r["category_id"], r["category_name"])
    for r in results:
        names.setdefault(r["category_id"], f"class {r['category_id']}")
    return names


if __name__ == "__main__":
    sys.exit(main())
