"""``analyze``: --run_eval on a model trained briefly on BCCD, --metrics_file, --predictions_file (with and
without ground truth). Reports must be complete (every chart, >= 10 drawn images, valid PNGs), self-contained
(HTML embeds every image) and readable (class names, not ids; captions big enough to read)."""
from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from dino_detector.analyze import main as analyze_main
from dino_detector.engine.evaluator import score_results

CLASSES = ["Platelets", "RBC", "WBC"]
RUN_EVAL_CHARTS = ["metrics.png", "per_class.png", "confusion_matrix.png", "pr_curves.png",
                   "confidence_histogram.png", "class_distribution.png"]


@pytest.fixture(scope="module")
def run_eval(bccd, trained_bccd, tmp_path_factory):
    out = tmp_path_factory.mktemp("run_eval")
    code = analyze_main(["--run_eval", "--model_path", str(trained_bccd / "dino_detector_final.pth"),
                         "--val_images", str(bccd["images"]), "--val_annotations", str(bccd["val"]),
                         "--output_dir", str(out), "--num_visualizations", "12", "--confidence_threshold", "0.3",
                         "--device", "cpu", "--batch_size", "8"])
    assert code == 0
    return out


def valid_png(path: Path, min_side: int = 200) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        assert min(im.size) >= min_side, f"{path.name} is only {im.size}"
        assert np.asarray(im.convert("L")).std() > 5, f"{path.name} is blank"
        return im.size


def check_report(out: Path, pictures: list[Path]) -> None:
    """report.md links every picture; report.html embeds every one and loads nothing from outside."""
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for p in pictures:
        assert f"]({p.relative_to(out).as_posix()})" in md, f"report.md does not link {p.name}"
    assert html.count("src='data:image/png;base64,") == len(pictures)
    assert not re.search(r"src=['\"](?!data:)", html), "report.html refers to an outside file"


def test_run_eval_writes_the_full_report(bccd, run_eval):
    out = run_eval
    for name in RUN_EVAL_CHARTS:
        valid_png(out / name)
    drawn = sorted((out / "visualizations").glob("*.png"))
    assert len(drawn) == 12
    for p in drawn:
        assert valid_png(p, 480)[0] >= 640  # BCCD's 640x480 pictures, with a caption band above
    check_report(out, [out / n for n in RUN_EVAL_CHARTS] + drawn)

    metrics = json.loads((out / "val_metrics.json").read_text())
    assert metrics["num_images"] == len(json.loads(bccd["val"].read_text())["images"])
    assert list(metrics["per_class"]) == CLASSES and metrics["confusion_matrix"]["labels"] == CLASSES + ["background"]
    assert list(metrics["pr_curves"]["IoU50"]) == CLASSES and len(metrics["pr_curves"]["recall"]) == 101
    md = (out / "report.md").read_text()
    for name in CLASSES:
        assert f"| {name} |" in md  # per-class and confusion tables are by name
    # the report's numbers are the training evaluator's on the saved predictions
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(bccd["val"]))
    again, _ = score_results(gt, json.loads((out / "val_predictions.json").read_text()), 0.5)
    for key in ("AP", "AP50", "precision", "recall", "f1", "mean_iou", "accuracy"):
        assert again[key] == pytest.approx(metrics[key]), key
    assert again["confusion_matrix"] == metrics["confusion_matrix"]
    # AP50 per class is the mean of the drawn PR curve's defined points
    for name in CLASSES:
        curve = np.asarray(metrics["pr_curves"]["IoU50"][name])
        assert metrics["per_class_AP50"][name] == pytest.approx(curve[curve > -1].mean())


def test_metrics_file_mode_tables_and_charts(trained_bccd, tmp_path):
    assert analyze_main(["--metrics_file", str(trained_bccd / "val_metrics_final.json"), "--output_dir",
                         str(tmp_path)]) == 0
    charts = [tmp_path / n for n in ("metrics.png", "per_class.png", "confusion_matrix.png")]
    for p in charts:
        valid_png(p)
    check_report(tmp_path, charts)
    metrics = json.loads((trained_bccd / "val_metrics_final.json").read_text())
    md = (tmp_path / "report.md").read_text()
    assert f"| AP | {metrics['AP']:.3f} |" in md and f"| recall | {metrics['recall']:.3f} |" in md


def test_predictions_on_a_plain_folder_use_the_names_in_the_results(tmp_path):
    """No annotations: image ids follow the folder rule (numeric stem, else position); names come from
    the entries' category_name."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("b.jpg", "a.jpg", "000000000007.png"):
        Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(images / name)
    results = [{"image_id": 1, "category_id": 5, "category_name": "zebra", "bbox": [10, 10, 50, 40], "score": 0.9},
               {"image_id": 7, "category_id": 5, "category_name": "zebra", "bbox": [5, 5, 20, 20], "score": 0.2}]
    (tmp_path / "p.json").write_text(json.dumps(results))
    out = tmp_path / "report"
    assert analyze_main(["--predictions_file", str(tmp_path / "p.json"), "--test_images", str(images),
                         "--output_dir", str(out), "--confidence_threshold", "0.5"]) == 0
    drawn = sorted(p.name for p in (out / "visualizations").glob("*.png"))
    assert drawn == ["000000000007.png", "a.png", "b.png"]
    md = (out / "report.md").read_text()
    assert "2 detections on 2 images; 1 at confidence >= 0.5" in md
    assert "a.jpg: 1 detection >= 0.5" in md  # position 1 in name order (000000000007.png is id 7)
    assert "000000000007.png: 0 detections >= 0.5" in md


def test_captions_use_class_names_at_a_readable_size():
    from dino_detector.analysis.plots import PALETTE, draw_detections

    def caption_box(names):
        image = Image.new("RGB", (320, 240), (128, 128, 128))
        drawn = np.asarray(draw_detections(image, [[40, 60, 200, 200]], [2], [0.9], names))
        ys, xs = np.nonzero((drawn == PALETTE[2]).all(axis=-1))
        caption = ys < 2 * 60  # the filled caption band sits above the box's top edge (enlarged 2x)
        return ys[caption].max() - ys[caption].min() + 1, xs[caption].max() - xs[caption].min() + 1

    height, width_named = caption_box({2: "Platelets"})
    _, width_id = caption_box({})
    assert height >= 16  # glyphs about 12 px high or more, on a 640-px-wide picture
    assert width_named > width_id + 20  # the caption spells the name, not the id


def test_bad_requests_are_clear_errors(trained_bccd, tmp_path, capsys):
    assert analyze_main(["--metrics_file", str(tmp_path / "missing.json")]) == 2
    assert "metrics file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        analyze_main(["--predictions_file", str(trained_bccd / "val_predictions_final.json")])  # no --test_images
    assert "--test_images" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        analyze_main(["--run_eval", "--metrics_file", "x.json"])  # two modes
    assert "choose one mode" in capsys.readouterr().err
    assert analyze_main(["--run_eval", "--model_path", str(trained_bccd / "val_metrics_final.json"),
                         "--val_annotations", "x.json", "--val_images", str(tmp_path)]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err  # a JSON file is not a checkpoint
