"""Bad input, fed to a dataset in one go: every problem gets a reported outcome (message and
count) before training starts, or a clear error naming the file; EXIF rotation keeps boxes on objects."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dino_detector.config import DataConfig
from dino_detector.data.coco import CocoDetection
from dino_detector.data.images import ImageReadError

W, H = 64, 48


def jpeg(path: Path, seed: int = 0) -> None:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def messy(tmp_path):
    """A COCO dataset with one of each bad input, and the category ids 1 (thing) and 2 (other)."""
    folder = tmp_path / "images"
    folder.mkdir()
    jpeg(folder / "good.jpg")
    jpeg(folder / "full.jpg", 1)
    data = (folder / "full.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])  # the header survives, the pixels do not
    (folder / "garbage.jpg").write_bytes(b"not an image at all" * 10)
    Image.fromarray(np.full((H, W), 120, np.uint8), mode="L").save(folder / "gray.png")
    Image.fromarray(np.full((H, W, 4), 200, np.uint8), mode="RGBA").save(folder / "rgba.png")
    Image.fromarray((np.arange(H * W).reshape(H, W) * 20).astype(np.uint16)).save(folder / "deep16.png")
    names = ["good.jpg", "truncated.jpg", "garbage.jpg", "missing.jpg", "gray.png", "rgba.png", "deep16.png",
             "no_boxes.jpg"]
    jpeg(folder / "no_boxes.jpg", 2)
    images = [{"id": i, "file_name": n, "width": W, "height": H} for i, n in enumerate(names, 1)]
    anns = [
        {"image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20]},      # fine
        {"image_id": 1, "category_id": 1, "bbox": [50, 30, 40, 40]},    # outside: clipped to [50, 30, 14, 18]
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 0, 5]},      # zero area: dropped
        {"image_id": 1, "category_id": 9, "bbox": [10, 10, 5, 5]},      # unknown category: dropped
        {"image_id": 2, "category_id": 2, "bbox": [5, 5, 10, 10]},
        {"image_id": 5, "category_id": 1, "bbox": [5, 5, 10, 10]},
        {"image_id": 6, "category_id": 2, "bbox": [5, 5, 10, 10]},
        {"image_id": 7, "category_id": 1, "bbox": [5, 5, 10, 10]},
    ]
    for i, a in enumerate(anns, 1):
        a.update(id=i, iscrowd=0, area=a["bbox"][2] * a["bbox"][3])
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns,
                               "categories": [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}]}))
    return folder, ann


def test_every_bad_input_is_reported_before_training_with_names_and_counts(messy, caplog):
    folder, ann = messy
    with caplog.at_level(logging.WARNING):
        ds = CocoDetection(folder, ann, DataConfig(image_size=W), train=True)
    text = caplog.text
    assert "1 of 8 images are missing and left out: missing.jpg" in text
    assert "1 of 8 images are not readable images and left out: garbage.jpg" in text
    assert ds.skipped == {"crowd": 0, "degenerate": 1, "unknown_category": 1}
    assert "'degenerate': 1" in text and "'unknown_category': 1" in text
    assert [ds.coco.imgs[i]["file_name"] for i in ds.ids] == ["good.jpg", "truncated.jpg", "gray.png",
                                                            "rgba.png", "deep16.png", "no_boxes.jpg"]
    boxes, labels = ds.targets[1]
    torch.testing.assert_close(boxes, torch.tensor([[4.0, 4, 24, 24], [50, 30, 64, 48]]))  # clipped
    assert ds.targets[8][0].shape == (0, 4)  # an image without boxes is background, not an error

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        items = [ds[i] for i in range(len(ds))]  # a whole epoch: nothing crashes
    assert "truncated.jpg" in caplog.text and "next image" in caplog.text
    assert items[1][1]["image_id"] == ds.ids[2]  # the next image stood in for the truncated one
    for image, target in items:
        assert image.shape == (3, H, W) and image.dtype == torch.float32
        assert 0 <= image.min() and image.max() <= 1


def test_truncated_image_during_evaluation_is_an_error_naming_the_file(messy):
    folder, ann = messy
    ds = CocoDetection(folder, ann, DataConfig(image_size=W), train=False)
    with pytest.raises(ImageReadError, match="truncated.jpg"):
        ds[1]


def test_empty_dataset_and_all_unreadable_are_clear_errors(tmp_path):
    (tmp_path / "images").mkdir()
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    with pytest.raises(ValueError, match="lists no images"):
        CocoDetection(tmp_path / "images", empty, DataConfig(), train=True)
    gone = tmp_path / "gone.json"
    gone.write_text(json.dumps({"images": [{"id": 1, "file_name": "x.jpg", "width": 4, "height": 4}],
                                "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    with pytest.raises(ValueError, match="none of its 1 images"):
        CocoDetection(tmp_path / "images", gone, DataConfig(), train=True)


def test_exif_rotated_photo_keeps_its_boxes_on_the_object(tmp_path):
    """The annotation is in displayed (upright) coordinates, as labelling tools show the photo; the file
    stores the pixels sideways with an EXIF orientation tag."""
    upright = np.zeros((80, 40, 3), np.uint8)  # displayed: 40 wide, 80 high
    upright[50:70, 5:25] = (255, 0, 0)  # a red object at x 5..25, y 50..70
    stored = np.rot90(upright, k=1).copy()  # what the camera wrote: rotated 90 degrees anticlockwise
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    (tmp_path / "images").mkdir()
    image.save(tmp_path / "images" / "photo.jpg", exif=exif, quality=95)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "photo.jpg", "width": 40, "height": 80}],
                               "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 50, 20, 20],
                                                "area": 400, "iscrowd": 0}],
                               "categories": [{"id": 1, "name": "object"}]}))
    ds = CocoDetection(tmp_path / "images", ann, DataConfig(image_size=80), train=False)
    image, target = ds[0]
    assert image.shape == (3, 80, 40)
    cx, cy, w, h = (target["boxes"][0] * torch.tensor([40, 80, 40, 80])).tolist()
    inside = image[:, int(cy - h / 2) + 2: int(cy + h / 2) - 2, int(cx - w / 2) + 2: int(cx + w / 2) - 2]
    assert inside[0].mean() > 0.8 and inside[1].mean() < 0.2  # the box is on the red object
    assert image[0, :40].mean() < 0.05  # and nothing red above it: the photo was turned upright
