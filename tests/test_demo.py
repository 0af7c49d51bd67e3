"""The offline demo: deterministic generated data and the files a run leaves behind (tiny, fast settings)."""
from __future__ import annotations

import json

from PIL import Image

from dino_detector.data.synthetic import CATEGORIES, generate_shapes


def test_generated_shapes_are_deterministic_and_split_disjoint(tmp_path):
    _, ann_a = generate_shapes(tmp_path / "a", "val", 6, seed=3)
    _, ann_b = generate_shapes(tmp_path / "b", "val", 6, seed=3)
    _, ann_t = generate_shapes(tmp_path / "a", "train", 6, seed=3)
    a, b, t = (json.loads(p.read_text()) for p in (ann_a, ann_b, ann_t))
    assert a["annotations"] == b["annotations"] and a["images"] == b["images"]
    assert a["annotations"] != t["annotations"]
    assert {c["id"] for c in a["categories"]} == {c["id"] for c in CATEGORIES} == {1, 3, 7}
    for ann in a["annotations"]:
        image = next(i for i in a["images"] if i["id"] == ann["image_id"])
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= image["width"] and y + h <= image["height"]
    first = Image.open(tmp_path / "a" / "val" / a["images"][0]["file_name"])
    assert first.size == (a["images"][0]["width"], a["images"][0]["height"])


def test_demo_writes_metrics_checkpoints_charts_and_drawn_predictions(tmp_path):
    from dino_detector.demo import main

    out = tmp_path / "demo"
    code = main(["--output_dir", str(out), "--train_size", "8", "--val_size", "3", "--image_size", "64",
                 "--time_budget_min", "0.05", "--epochs", "2", "--eval_every", "1", "--checkpoint_every", "1",
                 "--num_queries", "5", "--decoder_layers", "1", "--num_visualizations", "2"])
    assert code == 0
    for name in ("config.yaml", "dino_detector_final.pth", "val_metrics_final.json", "val_predictions_final.json",
                 "training_curves.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "val_metrics_final.json").read_text())
    assert metrics["num_images"] == 3 and 0.0 <= metrics["AP50"] <= 1.0
    assert metrics["score_threshold"] == 0.3
    assert sorted(p.name for p in (out / "predictions").iterdir()) == ["val_00000.jpg", "val_00001.jpg"]
    assert (out / "tensorboard").is_dir() and any((out / "tensorboard").iterdir())
