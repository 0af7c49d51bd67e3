"""``python -m dino_detector.predict``: run a trained detector on images or folders (recursively), or on a video.

Writes into --output_dir: predictions.json (a COCO results list; every entry also names its file_name and
category_name), images.json (the COCO "images" + "categories" the ids refer to, so that
``COCO("images.json").loadRes("predictions.json")`` works) and drawn/ (pictures with the boxes).
With --annotations, image ids are that file's ids (matched by file name) and unlisted files are skipped.
Files that cannot be read (not images, truncated, over Pillow's decompression-bomb limit) and links that
lead nowhere or back into a searched folder (symlink loops) are skipped and listed in the summary.
"""
from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from .cli import parse_settings
from .config import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictSettings(Settings):
    checkpoint: str  # dino_detector_*.pth checkpoint, save_pretrained folder, or a run's folder (its dino_detector_best.pth)
    images: Optional[list[str]] = None  # image files and / or folders (searched recursively)
    video: Optional[str] = None  # a video file instead of --images: annotated video + detections per frame (JSON lines)
    backend: Literal["torch", "onnxruntime", "openvino"] = "torch"  # torch: eager PyTorch; else the exported graph on the CPU
    int8: bool = False  # onnxruntime / openvino: the INT8 graph (quantised on --calibration_images the first time)
    calibration_images: Optional[str] = None  # --int8: a folder of your own images for the quantisation ranges
    int8_method: Literal["qdq", "nncf"] = "qdq"  # --int8: onnxruntime's static quantisation (either backend) or NNCF (openvino)
    slice: int = 0  # >0: sliced inference, tiles of this many pixels (and the whole image), boxes merged per class
    slice_overlap: float = 0.2  # --slice: fraction of a tile side that neighbouring tiles share
    slice_merge: Literal["nms", "nmm"] = "nms"  # --slice: merge by non-maximum suppression or merging
    slice_match: Literal["iou", "ios"] = "iou"  # --slice: overlap of two boxes: IoU, or intersection over the smaller one
    slice_prefer_whole: bool = False  # --slice: objects the whole image shows are taken from it; tiles add the rest
    weights: Literal["auto", "raw", "ema"] = "auto"  # a checkpoint's weights; auto: the deployable ones (EMA if kept)
    output_dir: str = "outputs/predict"  # folder for predictions.json, images.json and drawn/
    threshold: float = 0.5  # keep detections scoring above this
    top_k: int = 100  # at most this many detections per image
    batch_size: int = 4  # images per model call (sorted by size, so a batch shares one patch grid)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # where to run; auto: CUDA when available
    num_workers: int = -1  # image-decoding processes; -1: 0 on small CPU-only machines, else up to 8
    annotations: Optional[str] = None  # COCO JSON whose image ids the predictions should use (matched by file name)
    compile: bool = False  # torch.compile the model with frozen weights (pays off on long runs and GPUs)
    draw: bool = True  # write drawn pictures into drawn/ (--no_draw: only the JSON files)


def main(argv: list[str] | None = None) -> int:
    args, _ = parse_settings(PredictSettings, argv, description=__doc__.splitlines()[0],
                             epilog="\n".join(__doc__.splitlines()[2:]))
    from .runtime.logging import setup_console
    setup_console()
    from .backbones.vit import PretrainedUnavailableError
    from .data.images import ImageReadError
    try:
        return run(args)
    except (FileNotFoundError, ValueError, RuntimeError, ImageReadError, PretrainedUnavailableError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def open_settings_backend(args):
    """(backend, slice settings or None) of the predict settings; ValueErrors name the flag."""
    from .deploy.loader import open_backend
    from .deploy.slicing import slicing_from_flags
    from .models.detector import check_prediction_settings

    check_prediction_settings(args.threshold, args.top_k)
    if args.batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {args.batch_size}")
    if args.compile and args.backend != "torch":
        raise ValueError(f"--compile applies to the torch backend; the {args.backend} graph is optimised by its runtime")
    slicing = slicing_from_flags(args, batch_size=args.batch_size)
    backend = open_backend(args.checkpoint, args.backend, weights=args.weights, device=args.device, int8=args.int8,
                           calibration_images=args.calibration_images, top_k=args.top_k, compile_model=args.compile,
                           int8_method=args.int8_method)
    return backend, slicing


def run(args: PredictSettings) -> int:
    from .data.images import folder_image_id, scan_images, shown
    from .deploy.files import predict_files
    from .runtime.device import resolve_device, resolve_num_workers

    if (args.images is None) == (args.video is None):
        raise ValueError("give --images (files or folders) or --video FILE, one of the two")
    if args.video is not None:
        return _run_video(args)
    paths, unlisted = [], []
    for item in args.images:
        found, skipped = scan_images(item, recursive=True)
        paths += found
        unlisted += skipped
    paths = list(dict.fromkeys(paths))  # a file named twice (itself and its folder) is predicted once
    ids = {p: folder_image_id(p, i) for i, p in enumerate(paths)}
    if len(set(ids.values())) < len(ids):  # '1.jpg' and '001.jpg', or a numeric stem equal to a position
        log.warning("file names give the same image id twice: the images are numbered by position instead")
        ids = {p: i for i, p in enumerate(paths)}
    if args.annotations:
        ids, paths = _ids_from_annotations(args.annotations, paths)
    if not paths:
        raise ValueError(f"no image files found in {' '.join(args.images)}")
    backend, slicing = open_settings_backend(args)
    device = resolve_device(args.device)
    run_ = predict_files(backend, paths, batch_size=args.batch_size, threshold=args.threshold, top_k=args.top_k,
                         num_workers=resolve_num_workers(args.num_workers, device), slicing=slicing)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = dict(zip(backend.category_ids, backend.class_names))
    results, images = [], []
    for pred in run_.predictions:
        image_id = ids[pred.path]
        images.append({"id": image_id, "file_name": str(pred.path), "height": pred.height, "width": pred.width})
        for (x0, y0, x1, y1), score, cid in zip(pred.boxes, pred.scores, pred.category_ids):
            results.append({"image_id": image_id, "file_name": str(pred.path), "category_id": cid,
                            "category_name": names[cid], "bbox": [round(v, 2) for v in (x0, y0, x1 - x0, y1 - y0)],
                            "score": round(score, 5)})
    categories = [{"id": c, "name": n} for c, n in names.items()]
    (out / "predictions.json").write_text(json.dumps(results))
    (out / "images.json").write_text(json.dumps({"images": images, "categories": categories,
                                                 "annotations": []}))
    if args.draw:
        _draw(run_.predictions, names, out / "drawn")
    skipped = unlisted + run_.skipped
    print(f"{len(run_.predictions)} images, {len(results)} detections above {args.threshold}; "
          f"{len(skipped)} unreadable file(s) skipped" + "".join(f"\n  skipped {shown(p)}: {why}"
                                                               for p, why in skipped))
    where = "cpu" if args.backend != "torch" else device
    print(f"model time {run_.seconds:.1f} s: {run_.images_per_second:.2f} images/s on {where} "
          f"(batch {args.batch_size}, {backend.label}{', sliced' if slicing else ''}) -> "
          f"{shown(out / 'predictions.json')}")
    return 0


def _run_video(args: PredictSettings) -> int:
    from .analysis.plots import draw_detections
    from .data.images import shown
    from .deploy.video import predict_video

    backend, slicing = open_settings_backend(args)
    names = dict(zip(backend.category_ids, backend.class_names))

    def annotate(image, det):
        return draw_detections(image, det["boxes"].tolist(), det["category_ids"].tolist(), det["scores"].tolist(),
                               names)

    result = predict_video(backend, args.video, args.output_dir, threshold=args.threshold, top_k=args.top_k,
                           batch_size=args.batch_size, slicing=slicing, annotate=annotate if args.draw else None)
    print(f"{result.frames} frames, {result.detections} detections above {args.threshold}: "
          f"{result.frames_per_second:.2f} frames/s overall, model {result.frames / max(result.model_seconds, 1e-9):.2f} "
          f"frames/s ({backend.label}) -> " + ", ".join(shown(p) for p in (result.video, result.jsonl) if p))
    return 0


def _ids_from_annotations(annotations: str, paths: list[Path]) -> tuple[dict[Path, int], list[Path]]:
    """Image ids of a COCO file by file base name; unlisted files are left out with a warning."""
    path = Path(annotations)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    by_name = {Path(img["file_name"]).name: img["id"] for img in json.loads(path.read_text()).get("images", [])}
    kept = [p for p in paths if p.name in by_name]
    if len(kept) < len(paths):
        missing = next(p for p in paths if p.name not in by_name)
        log.warning("%d of %d files are not in %s and are skipped (e.g. %s)", len(paths) - len(kept), len(paths),
                    path, missing.name)
    return {p: by_name[p.name] for p in kept}, kept


def _draw(predictions, names: dict[int, str], folder: Path) -> None:
    from .analysis.plots import draw_detections
    from .data.images import load_image

    folder.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    for pred in predictions:
        stem = pred.path.stem
        while stem in used:  # same name in two sub-folders
            stem += "_"
        used.add(stem)
        header = f"{pred.path.name}: {len(pred.scores)} detection{'s' * (len(pred.scores) != 1)}"
        draw_detections(load_image(pred.path), pred.boxes, pred.category_ids, pred.scores, names,
                        header=header).save(folder / f"{stem}.jpg", quality=90)


if __name__ == "__main__":
    sys.exit(main())
