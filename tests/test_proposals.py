"""Unsupervised box proposals (``train --proposals``): boxes of what stands out in unlabelled images, made once
per run, and a detection pretraining run whose encoder a later run reads with ``--dino_model``."""
from __future__ import annotations

import json
import shutil
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

from dino_detector.config import DataConfig, build_config
from dino_detector.data import proposals
from dino_detector.data.build import open_sources
from dino_detector.data.proposals import PROPOSAL_CLASS, cached_proposals, unsupervised_boxes

# (centre x, centre y), radius, colour: three stained "cells" of different sizes on a pale, noisy smear
DISCS = [((60, 50), 18, (150, 30, 40)), ((200, 130), 34, (40, 60, 160)), ((110, 170), 10, (90, 20, 120))]


def disc_image(seed: int = 0, height: int = 240, width: int = 320) -> tuple[np.ndarray, torch.Tensor]:
    """[H, W, 3] uint8 and the discs' boxes [3, 4] (x0, y0, x1, y1, pixel edges)."""
    rng = np.random.default_rng(seed)
    image = 225 + rng.normal(0, 4, (height, width, 3))
    ys, xs = np.mgrid[:height, :width]
    boxes = []
    for (cx, cy), radius, colour in DISCS:
        image[(xs - cx) ** 2 + (ys - cy) ** 2 <= radius ** 2] = colour
        boxes.append([cx - radius, cy - radius, cx + radius + 1, cy + radius + 1])
    return image.clip(0, 255).astype(np.uint8), torch.tensor(boxes, dtype=torch.float32)


def test_the_discs_are_the_best_boxes_and_the_count_is_capped():
    image, discs = disc_image()
    boxes = unsupervised_boxes(image, max_boxes=8)
    assert boxes.dtype == np.float32 and boxes.shape[1] == 4 and 3 <= len(boxes) <= 8
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 320).all() and (boxes[:, 3] <= 240).all()
    best = box_iou(discs, torch.from_numpy(boxes[:3]))  # the three highest-contrast boxes
    assert (best.max(1).values > 0.75).all(), best  # the smoothing takes in or leaves out an edge pixel
    assert len(unsupervised_boxes(image, max_boxes=2)) == 2


def test_a_plain_image_has_no_proposals():
    plain = np.full((120, 160, 3), 200, np.uint8)
    assert unsupervised_boxes(plain).shape == (0, 4)


def write_images(folder, seeds=(0, 1, 2)):
    (folder / "sub").mkdir(parents=True)
    for seed in seeds:
        Image.fromarray(disc_image(seed)[0]).save(folder / "sub" / f"smear_{seed}.png")


def test_proposals_are_made_once_per_run_and_remade_when_the_settings_change(tmp_path):
    write_images(tmp_path / "images")
    path = cached_proposals(tmp_path / "images", tmp_path / "run" / "proposals.json", max_boxes=5)
    coco = json.loads(path.read_text())
    assert coco["categories"] == [{"id": 1, "name": PROPOSAL_CLASS}]
    assert sorted(i["file_name"] for i in coco["images"]) == [f"sub/smear_{s}.png" for s in range(3)]
    assert all((i["width"], i["height"]) == (320, 240) for i in coco["images"])
    per_image = [sum(a["image_id"] == i["id"] for a in coco["annotations"]) for i in coco["images"]]
    assert all(3 <= n <= 5 for n in per_image), per_image
    assert all(a["bbox"][2] > 0 and a["bbox"][3] > 0 and a["category_id"] == 1 for a in coco["annotations"])
    written = path.stat().st_mtime_ns
    assert cached_proposals(tmp_path / "images", path, max_boxes=5).stat().st_mtime_ns == written  # reused
    fewer = json.loads(cached_proposals(tmp_path / "images", path, max_boxes=3).read_text())
    assert len(fewer["annotations"]) == 9  # remade: 3 boxes per image


def test_under_torchrun_the_other_processes_wait_for_the_first_ones_file(tmp_path, monkeypatch):
    """A process that is not the first one neither makes boxes nor takes a stale file of other settings: it
    waits until the first process has written this run's file (no collective, whose timeout a large folder
    would outlast), then reads the same boxes."""
    write_images(tmp_path / "images")
    path = tmp_path / "run" / "proposals.json"
    first = cached_proposals(tmp_path / "images", tmp_path / "first.json", max_boxes=3)
    stale = json.loads(cached_proposals(tmp_path / "images", path, max_boxes=5).read_text())  # other settings
    monkeypatch.setattr(proposals, "world_size", lambda: 2)
    monkeypatch.setattr(proposals, "is_main_process", lambda: False)
    monkeypatch.setattr(proposals, "POLL_S", 0.05)
    made = []
    monkeypatch.setattr(proposals, "proposal_coco", lambda *a, **k: made.append(a) or {})  # must not be called
    writer = threading.Timer(0.5, lambda: shutil.copy(first, path))  # the first process, done later
    writer.start()
    started = time.monotonic()
    assert cached_proposals(tmp_path / "images", path, max_boxes=3) == path
    assert time.monotonic() - started >= 0.45 and not made
    waited = json.loads(path.read_text())
    assert waited["info"]["proposals"]["max_boxes"] == 3 and waited != stale
    assert waited["annotations"] == json.loads(first.read_text())["annotations"]


def test_proposals_refuse_labels_and_need_images(tmp_path, bccd):
    with pytest.raises(ValueError, match="drop --train_annotations"):
        open_sources(DataConfig(proposals=True, train_images=str(bccd["images"]),
                                train_annotations=str(bccd["train"])), train=True, run_folder=tmp_path)
    with pytest.raises(ValueError, match="needs --train_images"):
        open_sources(DataConfig(proposals=True), train=True, run_folder=tmp_path)
    with pytest.raises(ValueError, match="at least 1"):
        cached_proposals(bccd["images"], tmp_path / "p.json", max_boxes=0)


def test_detection_pretraining_writes_an_encoder_that_a_detector_reads(bccd, tmp_path):
    from dino_detector.engine.trainer import Trainer
    from dino_detector.models.detector import ObjectDetector

    images = tmp_path / "unlabelled"
    images.mkdir()
    for path in sorted(bccd["images"].glob("*.jpg"))[:4]:
        shutil.copy(path, images)
    model = dict(dino_model="tiny", pretrained=False, image_size=128, num_queries=20, decoder_layers=1)
    run = tmp_path / "boxes"
    cfg = build_config("standard", **model, proposals=True, proposals_per_image=10, train_images=str(images),
                       output_dir=str(run), device="cpu", num_workers=0, epochs=1, batch_size=2)
    trainer = Trainer(cfg)
    assert trainer.model.class_names == [PROPOSAL_CLASS] and trainer.val_set is None
    assert len(trainer.train_set) == 4
    before = {k: v.clone() for k, v in trainer.model.backbone.vit.state_dict().items()}
    trainer.fit()
    assert (run / "proposals.json").is_file() and (run / "dino_detector_final.pth").is_file()
    trained = trainer.model.backbone.vit.state_dict()
    assert any(not torch.equal(before[k], trained[k]) for k in trained)  # the encoder learnt
    # a new detector on the pretraining run's folder starts from exactly that encoder
    reader = ObjectDetector(num_classes=3, config=build_config(
        "standard", **{**model, "dino_model": str(run), "pretrained": True}).model)
    assert reader.config.backbone_weights == "encoder"
    for name, tensor in reader.backbone.vit.state_dict().items():
        assert torch.equal(tensor, trained[name]), name


def test_object_windows_are_squares_around_a_proposal_clamped_to_the_image(tmp_path):
    from dino_detector.ssl.multicrop import ObjectWindows

    path = tmp_path / "a.png"
    windows = ObjectWindows({str(path.resolve()): torch.tensor([[100.0, 50.0, 120.0, 90.0]])}, context=2.0)
    image = torch.rand(3, 240, 320, generator=torch.Generator().manual_seed(0))
    # side 2 x 40 = 80 around the centre (110, 70)
    assert torch.equal(windows.around_an_object(image, path), image[:, 30:110, 70:150])
    edge = ObjectWindows({str(path.resolve()): torch.tensor([[0.0, 0.0, 30.0, 20.0]])}, context=2.0)
    assert torch.equal(edge.around_an_object(image, path), image[:, :60, :60])  # kept inside the image
    assert torch.equal(windows.around_an_object(image, tmp_path / "other.png"), image)  # no proposals: whole
    with pytest.raises(ValueError, match="at least 1"):
        ObjectWindows({}, context=0.5)


def test_pretraining_with_object_views_makes_the_proposals_it_draws_them_around(tmp_path):
    from dino_detector.pretrain import main as pretrain_main

    write_images(tmp_path / "images")
    out = tmp_path / "pretrain"
    assert pretrain_main(["--images", str(tmp_path / "images" / "sub"), "--arch", "flexible-tiny", "--epochs", "1",
                          "--object_views", "--object_boxes", "4", "--global_scale", "0.4", "1.0",
                          "--local_scale", "0.1", "0.3", "--batch_size", "3", "--global_size", "32",
                          "--local_size", "16", "--n_local", "2", "--out_dim", "64", "--head_hidden_dim", "32",
                          "--head_bottleneck_dim", "16", "--device", "cpu", "--num_workers", "0",
                          "--output_dir", str(out)]) == 0
    coco = json.loads((out / "proposals_0.json").read_text())
    assert len(coco["images"]) == 3 and 9 <= len(coco["annotations"]) <= 12
    assert (out / "encoder_final.pth").is_file()


def test_a_detectors_boxes_are_merged_across_classes_ranked_and_capped():
    from dino_detector.models.detector_proposals import DetectorProposals

    dets = {"boxes": torch.tensor([[10.0, 10, 50, 50], [11, 10, 50, 51], [100, 100, 140, 160], [0, 0, 5, 5]]),
            "scores": torch.tensor([0.6, 0.9, 0.7, 0.4]), "labels": torch.tensor([1, 2, 1, 1])}
    kept = DetectorProposals._kept(dets, max_boxes=5)
    # the same cell under two classes is one proposal, the better-scored box; then by score
    assert kept.dtype == np.float32
    np.testing.assert_array_equal(kept, [[11, 10, 50, 51], [100, 100, 140, 160], [0, 0, 5, 5]])
    np.testing.assert_array_equal(DetectorProposals._kept(dets, max_boxes=1), [[11, 10, 50, 51]])


def test_proposals_from_needs_proposals_and_a_detector(tmp_path):
    from dino_detector.models.detector_proposals import DetectorProposals
    from dino_detector.spec import plan_run

    with pytest.raises(ValueError, match="add --proposals"):
        plan_run(build_config("standard", proposals_from=str(tmp_path), train_images=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="run folder with dino_detector_best.pth or dino_detector_final.pth"):
        DetectorProposals(tmp_path)
    with pytest.raises(ValueError, match=r"proposals_min_score must be in \[0, 1\)"):
        DetectorProposals(tmp_path, min_score=1.0)


def test_a_self_training_round_trains_on_the_first_rounds_confident_boxes(bccd, tmp_path):
    from dino_detector.engine.trainer import Trainer
    from dino_detector.models.detector import ObjectDetector

    images = tmp_path / "unlabelled"
    images.mkdir()
    for path in sorted(bccd["images"].glob("*.jpg"))[:3]:
        shutil.copy(path, images)
    common = dict(dino_model="tiny", pretrained=False, image_size=128, num_queries=20, decoder_layers=1,
                  proposals=True, proposals_per_image=6, train_images=str(images), device="cpu", num_workers=0,
                  epochs=1, batch_size=3)
    first = tmp_path / "round1"
    Trainer(build_config("standard", **common, output_dir=str(first))).fit()
    second = tmp_path / "round2"
    trainer = Trainer(build_config("standard", **common, proposals_from=str(first), proposals_min_score=0.05,
                                   init_from=str(first / "dino_detector_final.pth"), output_dir=str(second)))
    made = json.loads((second / "proposals.json").read_text())
    settings = made["info"]["proposals"]
    assert settings["method"] == "detector/1" and settings["min_score"] == 0.05
    assert settings["detector"] == str((first / "dino_detector_final.pth").resolve())
    detector = ObjectDetector.from_pretrained(first / "dino_detector_final.pth")
    for image in made["images"]:
        boxes = torch.tensor([a["bbox"] for a in made["annotations"] if a["image_id"] == image["id"]]).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        dets = detector.predict(str(images / image["file_name"]), threshold=0.05)
        assert 1 <= len(boxes) <= 6 and len(boxes) <= len(dets["boxes"])
        # each box is one of the first round's detections scoring at least 0.05, best first
        match = box_iou(boxes, dets["boxes"]).max(1)
        assert (match.values > 0.999).all()
        assert (dets["scores"][match.indices] >= 0.05).all()
        assert (dets["scores"][match.indices].diff() <= 0).all()
    assert len(trainer.train_set) == 3 and trainer.model.class_names == [PROPOSAL_CLASS]
    # another threshold is another set of boxes: the cached file is made again
    Trainer(build_config("standard", **common, proposals_from=str(first), proposals_min_score=0.5,
                         output_dir=str(second)))
    assert json.loads((second / "proposals.json").read_text())["info"]["proposals"]["min_score"] == 0.5
