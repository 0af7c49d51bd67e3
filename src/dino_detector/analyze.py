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

import argparse
import json
import sys
from pathlib import Path

from .engine.logging import setup_console


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[3:]))
    add = parser.add_argument
    add("--metrics_file", help="a metrics JSON written by train or analyze --run_eval")
    add("--predictions_file", help="COCO results JSON (val_predictions_final.json, testdev_predictions_...)")
    add("--test_images", help="the folder the predictions' images are in")
    add("--annotations", help="ground truth (COCO JSON, VOC or YOLO folder) for --predictions_file / --compare")
    add("--num_visualizations", type=int, default=10, help="images to draw (default 10)")
    add("--confidence_threshold", type=float, default=0.5, help="drawn boxes and class counts (default 0.5)")
    add("--run_eval", action="store_true", help="evaluate --model_path on --val_images / --val_annotations")
    add("--model_path", help="a checkpoint (dino_detector_*.pth) or save_pretrained folder")
    add("--val_images")
    add("--val_annotations")
    add("--data_format", default="auto", choices=["auto", "coco", "voc", "yolo", "hf"])
    add("--batch_size", type=int, default=4)
    add("--device", default="auto", choices=["auto", "cpu", "cuda"])
    add("--score_threshold", type=float, default=0.5, help="for precision / recall / F1 / confusion matrix")
    add("--compare", nargs="+", metavar="RESULTS_JSON", help="COCO results files to compare")
    add("--labels", nargs="+", help="a name per --compare file (default: file names)")
    add("--output_dir", default="outputs/analysis")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_console()
    modes = [bool(args.metrics_file or args.predictions_file), args.run_eval, bool(args.compare)]
    if sum(modes) != 1:
        parser.error("choose one mode: --metrics_file and/or --predictions_file, --run_eval, or --compare")
    from .backbones.dino import PretrainedUnavailableError
    from .data.images import ImageReadError
    try:
        if args.compare:
            report = _compare(args, parser)
        elif args.run_eval:
            report = _run_eval(args, parser)
        else:
            report = _files(args, parser)
    except (FileNotFoundError, ValueError, ImageReadError, PretrainedUnavailableError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    md, htm = report.write()
    print(f"report -> {md}, {htm}")
    return 0


def _report(args, title: str):
    from .analysis.report import Report
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    return Report(title, Path(args.output_dir))


def _compare(args, parser):
    from .analysis.compare import compare, comparison_cells, comparison_chart, comparison_table
    if not args.annotations:
        parser.error("--compare needs --annotations (the ground truth every results file is scored against)")
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


def _files(args, parser):
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
            parser.error("--predictions_file needs --test_images (the folder its images are in)")
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


def _run_eval(args, parser):
    from .analysis.run_eval import evaluate_model
    from .analysis.sections import Predictions, annotated_files, metrics_section, predictions_section
    if not (args.model_path and args.val_annotations):
        parser.error("--run_eval needs --model_path and --val_annotations (and --val_images for COCO JSON)")
    ev = evaluate_model(args.model_path, args.val_images, args.val_annotations, args.data_format,
                        args.score_threshold, args.batch_size, args.device)
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


def _ground_truth(images: str, annotations: str, data_format: str):
    """(pycocotools COCO, image folder): VOC / YOLO sources name their own image folder."""
    from .data.build import open_source
    from .data.coco import load_coco
    source = open_source(images, annotations, data_format, "val")
    return load_coco(source.annotations), source.images


def _class_names(results: list[dict], gt, model_path: str | None) -> dict[int, str]:
    """Category id -> name: from the annotations, the entries' own 'category_name', or the model's metadata;
    ids the sources do not name are shown as 'class <id>'."""
    names: dict[int, str] = {}
    if gt is not None:
        names = {c["id"]: c["name"] for c in gt.dataset["categories"]}
    elif model_path:
        from .models.detector import saved_metadata
        meta = saved_metadata(model_path)
        names = dict(zip(meta["category_ids"], meta["class_names"]))
    for r in results:
        if "category_name" in r:
            names.setdefault(r["category_id"], r["category_name"])
    for r in results:
        names.setdefault(r["category_id"], f"class {r['category_id']}")
    return names


if __name__ == "__main__":
    sys.exit(main())
