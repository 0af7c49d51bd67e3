"""Staged fine-tuning (--unfreeze_at_epoch): frozen backbone first, then trained with its own lr; resume
works on either side of the switch."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dino_detector.config import build_config
from dino_detector.engine.trainer import Trainer


def staged_config(tiny_coco, out: Path, **overrides):
    images, ann = str(tiny_coco["images"]), str(tiny_coco["annotations"])
    settings = dict(dino_model="tiny", pretrained=False, image_size=96, batch_size=4, num_queries=10,
                    decoder_layers=1, device="cpu", num_workers=0, train_images=images, train_annotations=ann,
                    epochs=3, unfreeze_at_epoch=1, lr=1e-3, unfreeze_lr=2e-4, lr_backbone=5e-4, eval_every=0,
                    checkpoint_every=1, output_dir=str(out))
    return build_config("standard", **{**settings, **overrides})


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def backbone_weights(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.startswith("backbone.")}


@pytest.fixture(scope="module")
def straight(tiny_coco, tmp_path_factory):
    out = tmp_path_factory.mktemp("staged")
    trainer = Trainer(staged_config(tiny_coco, out))
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items() if k.startswith("backbone.")}
    assert trainer.spec.model.backbone_mode == "frozen"  # "auto" becomes frozen for the first stage
    assert not any(p.requires_grad for p in trainer.model.backbone.parameters())
    trainer.fit()
    return out, initial


def test_backbone_frozen_then_trained_with_its_own_lr(straight):
    out, initial = straight
    first, second = load(out / "dino_detector_epoch_1.pth"), load(out / "dino_detector_epoch_2.pth")
    for k, v in backbone_weights(first["model"]).items():
        assert torch.equal(v, initial[k]), k  # stage 1: untouched
    moved = max((v - initial[k]).abs().max().item() for k, v in backbone_weights(second["model"]).items()
                if v.is_floating_point())
    assert moved > 1e-4  # stage 2: trained
    groups = {g["name"]: g for g in second["optimizer"]["param_groups"]}
    assert [g["name"] for g in first["optimizer"]["param_groups"]] == ["head"]
    assert groups["backbone"]["lr"] == pytest.approx(5e-4) and groups["head"]["lr"] == pytest.approx(2e-4)
    assert second["metadata"]["model"]["backbone_mode"] == "full"


@pytest.mark.parametrize("resume_from", [1, 2])
def test_resume_across_the_unfreeze_switch_matches_straight_run(straight, tiny_coco, tmp_path, resume_from):
    out, _ = straight
    cfg = staged_config(tiny_coco, tmp_path, checkpoint=str(out / f"dino_detector_epoch_{resume_from}.pth"))
    Trainer(cfg).fit()
    expected, resumed = load(out / "dino_detector_final.pth"), load(tmp_path / "dino_detector_final.pth")
    for name, value in expected["model"].items():
        assert torch.allclose(value, resumed["model"][name], atol=1e-6, rtol=0), name


def test_unfreeze_needs_a_frozen_first_stage(tiny_coco, tmp_path):
    with pytest.raises(ValueError, match="backbone_mode frozen"):
        Trainer(staged_config(tiny_coco, tmp_path, backbone_mode="full"))
