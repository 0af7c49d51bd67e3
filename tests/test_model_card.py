"""``export --format pretrained``: a training checkpoint becomes a save_pretrained folder whose model card
holds the run's own settings and measured metrics, and which predicts exactly what the checkpoint does."""
from __future__ import annotations

import json

import torch

from dino_detector import DINOv2ObjectDetector
from dino_detector.export import main as export_main

CARD_SECTIONS = ["## Model Overview", "## Model Description", "### Architecture Diagram", "## Training Details",
                 "### Training Data", "### Training Procedure", "## Performance", "## Limitations",
                 "## Ethical Considerations", "## Usage"]


def test_checkpoint_to_pretrained_folder_with_model_card(trained_bccd, bccd, tmp_path, capsys):
    folder = tmp_path / "model"
    assert export_main(["--checkpoint", str(trained_bccd / "dino_detector_final.pth"), "--format", "pretrained",
                        "--output", str(folder)]) == 0
    assert "metrics from" in capsys.readouterr().out
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.json", "README.md"}
    card = (folder / "README.md").read_text()
    positions = [card.index(s) for s in CARD_SECTIONS]
    assert positions == sorted(positions)  # the DINOv2-OD model card's order
    metrics = json.loads((trained_bccd / "val_metrics_final.json").read_text())
    assert f"| AP | {metrics['AP']:.3f} |" in card and f"| AP50 | {metrics['AP50']:.3f} |" in card
    assert "`tiny` (full)" in card and "Platelets, RBC, WBC" in card
    assert str(bccd["train"]) in card and "lr 0.0005" in card  # the run's data and settings (debug lr)

    from_folder = DINOv2ObjectDetector.from_pretrained(folder).eval()
    from_file = DINOv2ObjectDetector.from_pretrained(trained_bccd / "dino_detector_final.pth").eval()
    image = torch.rand(3, 100, 140, generator=torch.Generator().manual_seed(0))
    a, b = from_folder.predict(image, threshold=0.0), from_file.predict(image, threshold=0.0)
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
    assert a["label_names"] == b["label_names"]


def test_api_model_card_without_run_information(tmp_path):
    model = DINOv2ObjectDetector(num_classes=2, dino_model="tiny", pretrained=False, num_queries=5,
                                 class_names=["cat", "dog"])
    model.save_pretrained(tmp_path / "m")
    card = (tmp_path / "m" / "README.md").read_text()
    assert "No measured metrics were saved with this model." in card and "cat, dog" in card
