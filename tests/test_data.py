"""COCO datasets: category mapping, crowd handling, box cleaning, robust image reading, transforms."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dino_detector.config import DataConfig
from dino_detector.data.coco import CocoDetection
from dino_detector.data.images import ImageReadError, load_image, to_tensor_image
from dino_detector.data.transforms import DetectionTransform


def write_coco(tmp_path: Path, images: list[dict], annotations: list[dict],
               categories=({"id": 1, "name": "thing"},)) -> tuple[Path, Path]:
    """A COCO JSON in tmp_path/ann.json, images expected in tmp_path/images."""
    (tmp_path / "images").mkdir(exist_ok=True)
    for i, a in enumerate(annotations, 1):
        a.setdefault("id", i)
        a.setdefault("iscrowd", 0)
        a.setdefault("area", a["bbox"][2] * a["bbox"][3])
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": list(categories)}))
    return tmp_path / "images", ann


def save_random_image(path: Path, w: int, h: int, seed: int = 0) -> None:
    array = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(array).save(path)


# ---------------------------------------------------------------------------------------------- tiny-coco
@pytest.fixture(scope="module")
def tiny_coco_raw(tiny_coco):
    return json.loads(Path(tiny_coco["annotations"]).read_text())


@pytest.fixture(scope="module")
def tiny_coco_train(tiny_coco):
    return CocoDetection(tiny_coco["images"], tiny_coco["annotations"], DataConfig(image_size=128), train=True)


def test_tiny_coco_sparse_category_ids_map_to_contiguous_labels(tiny_coco_train, tiny_coco_raw):
    ds = tiny_coco_train
    json_ids = sorted(c["id"] for c in tiny_coco_raw["categories"])
    assert ds.category_ids == json_ids
    assert ds.num_classes == len(ds.category_ids) == 80
    assert max(ds.category_ids) > 80  # sparse COCO ids (up to 90)
    assert [ds.label_of[cid] for cid in ds.category_ids] == list(range(80))
    assert all(ds.category_ids[ds.label_of[cid]] == cid for cid in json_ids)
    names = {c["id"]: c["name"] for c in tiny_coco_raw["categories"]}
    assert ds.class_names == [names[cid] for cid in ds.category_ids]


def test_tiny_coco_crowd_object_is_kept_for_evaluation_but_not_trained_on(tiny_coco_train, tiny_coco_raw):
    ds = tiny_coco_train
    crowd = [a for a in tiny_coco_raw["annotations"] if a.get("iscrowd")]
    assert len(crowd) == 1
    crowd = crowd[0]
    assert ds.skipped["crowd"] == 1
    assert ds.coco.anns[crowd["id"]]["iscrowd"] == 1  # still in the evaluation ground truth

    image_id = crowd["image_id"]
    others = [a for a in tiny_coco_raw["annotations"] if a["image_id"] == image_id and not a.get("iscrowd")]
    boxes, labels = ds.targets[image_id]
    assert len(labels) == len(others)
    x, y, w, h = crowd["bbox"]
    crowd_xyxy = torch.tensor([x, y, x + w, y + h], dtype=torch.float32)
    assert not any(torch.allclose(b, crowd_xyxy, atol=0.5) for b in boxes)
    # labels follow the contiguous mapping of each annotation's category
    assert sorted(labels.tolist()) == sorted(ds.label_of[a["category_id"]] for a in others)
    # the total number of training targets is every non-crowd annotation
    total = sum(len(lbl) for _, lbl in ds.targets.values())
    assert total == len(tiny_coco_raw["annotations"]) - 1


def test_tiny_coco_item_labels_and_category_ids_round_trip(tiny_coco, tiny_coco_raw):
    ds = CocoDetection(tiny_coco["images"], tiny_coco["annotations"], DataConfig(image_size=128), train=False)
    image, target = ds[0]
    image_id = target["image_id"]
    expected = sorted(a["category_id"] for a in tiny_coco_raw["annotations"]
                      if a["image_id"] == image_id and not a.get("iscrowd"))
    assert sorted(ds.category_ids[i] for i in target["labels"].tolist()) == expected
    assert max(image.shape[-2:]) == 128
    info = ds.coco.imgs[image_id]
    assert target["orig_size"] == (info["height"], info["width"])


# ---------------------------------------------------------------------------------------------- bccd
def test_bccd_targets_are_normalised_cxcywh_with_labels_0_to_2(bccd):
    ds = CocoDetection(bccd["images"], bccd["train"], DataConfig(image_size=128), train=True)
    assert ds.category_ids == [1, 2, 3]
    assert ds.class_names == ["Platelets", "RBC", "WBC"]
    for i in range(6):
        image, target = ds[i]
        assert image.shape[0] == 3 and max(image.shape[-2:]) == 128
        assert 0.0 <= image.min() and image.max() <= 1.0
        boxes, labels = target["boxes"], target["labels"]
        assert boxes.shape == (len(labels), 4) and len(labels) > 0
        assert labels.dtype == torch.int64 and set(labels.tolist()) <= {0, 1, 2}
        assert (boxes >= 0).all() and (boxes <= 1).all()
        assert (boxes[:, 2:] > 0).all()
        # cxcywh: the box edges stay inside the image
        assert (boxes[:, :2] - boxes[:, 2:] / 2 >= -1e-6).all()
        assert (boxes[:, :2] + boxes[:, 2:] / 2 <= 1 + 1e-6).all()


def test_bccd_boxes_follow_the_annotations_through_resizing(bccd):
    ds = CocoDetection(bccd["images"], bccd["train"], DataConfig(image_size=160), train=False)
    image, target = ds[0]
    info = ds.coco.imgs[target["image_id"]]
    assert image.shape[-2:] == (120, 160)  # 640 x 480 -> longer side 160
    anns = ds.coco.imgToAnns[target["image_id"]]
    expected = torch.tensor([[(x + w / 2) / info["width"], (y + h / 2) / info["height"],
                              w / info["width"], h / info["height"]] for x, y, w, h in (a["bbox"] for a in anns)])
    expected_labels = torch.tensor([a["category_id"] - 1 for a in anns])
    order = torch.argsort(target["boxes"][:, 0] * 10 + target["boxes"][:, 1])
    order_exp = torch.argsort(expected[:, 0] * 10 + expected[:, 1])
    torch.testing.assert_close(target["boxes"][order], expected[order_exp].float(), atol=1e-5, rtol=0)
    assert torch.equal(target["labels"][order], expected_labels[order_exp])


# ---------------------------------------------------------------------------------------------- bad files
def test_truncated_jpeg_raises_image_read_error_naming_the_file(tmp_path):
    images, ann = write_coco(tmp_path, [{"id": 1, "file_name": "truncated.jpg", "width": 64, "height": 48}],
                             [{"image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10]}])
    save_random_image(images / "full.jpg", 64, 48)
    data = (images / "full.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(data[: len(data) // 2])
    ds = CocoDetection(images, ann, DataConfig(image_size=64), train=False)
    with pytest.raises(ImageReadError, match="truncated.jpg"):
        ds[0]


def test_missing_annotation_file_and_folder_raise_file_not_found(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CocoDetection(tmp_path / "images", tmp_path / "nope.json", DataConfig(), train=False)
    with pytest.raises(FileNotFoundError, match="no_folder"):
        CocoDetection(tmp_path / "no_folder", tmp_path / "nope.json", DataConfig(), train=False)


def test_degenerate_boxes_are_dropped_and_boxes_outside_are_clipped(tmp_path):
    w, h = 100, 80
    images, ann = write_coco(tmp_path, [{"id": 7, "file_name": "img.png", "width": w, "height": h}], [
        {"image_id": 7, "category_id": 1, "bbox": [10, 10, 20, 20]},   # normal
        {"image_id": 7, "category_id": 1, "bbox": [30, 30, 0, 10]},    # zero width
        {"image_id": 7, "category_id": 1, "bbox": [40, 40, 10, 0]},    # zero height
        {"image_id": 7, "category_id": 1, "bbox": [-10, 50, 30, 40]},  # partly outside: -> [0, 50, 20, 80]
        {"image_id": 7, "category_id": 1, "bbox": [120, 10, 10, 10]},  # entirely outside
        {"image_id": 7, "category_id": 9, "bbox": [5, 5, 10, 10]},     # unknown category
    ])
    save_random_image(images / "img.png", w, h)
    ds = CocoDetection(images, ann, DataConfig(image_size=100), train=False)

    assert ds.skipped == {"crowd": 0, "degenerate": 3, "unknown_category": 1}
    boxes, labels = ds.targets[7]
    torch.testing.assert_close(boxes, torch.tensor([[10.0, 10, 30, 30], [0, 50, 20, 80]]))
    assert labels.tolist() == [0, 0]

    image, target = ds[0]  # image_size 100 = the original size: no rescaling
    assert image.shape == (3, h, w)
    expected = torch.tensor([[20 / w, 20 / h, 20 / w, 20 / h], [10 / w, 65 / h, 20 / w, 30 / h]])
    torch.testing.assert_close(target["boxes"], expected, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------- image modes
def write_mode_images(folder: Path) -> dict[str, Path]:
    folder.mkdir(exist_ok=True)
    paths = {}
    gray = np.tile(np.arange(0, 200, 10, dtype=np.uint8), (12, 1))  # 12 x 20
    paths["gray"] = folder / "gray.png"
    Image.fromarray(gray, mode="L").save(paths["gray"])
    rgba = np.zeros((12, 20, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    rgba[:, 10:, 3] = 0  # right half fully transparent -> white background
    paths["rgba"] = folder / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(paths["rgba"])
    deep = (np.arange(12 * 20).reshape(12, 20) * 270).astype(np.uint16)  # up to 64530: needs 16 bits
    paths["gray16"] = folder / "gray16.png"
    Image.fromarray(deep).save(paths["gray16"])
    return paths


def test_grayscale_rgba_and_16bit_pngs_load_as_rgb(tmp_path):
    paths = write_mode_images(tmp_path)
    assert Image.open(paths["gray16"]).mode.startswith("I")  # really a 16-bit file

    for path in paths.values():
        assert load_image(path).mode == "RGB"
        assert to_tensor_image(path).shape == (3, 12, 20)

    gray = to_tensor_image(paths["gray"])
    torch.testing.assert_close(gray[:, 0, 3], torch.full((3,), 30 / 255))
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])

    rgba = to_tensor_image(paths["rgba"])
    torch.testing.assert_close(rgba[:, 0, 0], torch.tensor([200 / 255, 0.0, 0.0]))
    torch.testing.assert_close(rgba[:, 0, 15], torch.ones(3))

    deep = to_tensor_image(paths["gray16"])
    expected = torch.from_numpy((np.arange(12 * 20).reshape(12, 20) * 270) / 65535.0).float()
    for c in range(3):  # 16 -> 8 bit quantisation: within one 8-bit step
        assert (deep[c] - expected).abs().max() <= 1 / 255 + 1e-6
    assert deep.max() > 0.9  # not clipped to the low byte


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 wide, 20 high; left half red
    array[:, :20, 0] = 255
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=95)

    tensor = to_tensor_image(tmp_path / "rotated.jpg")

    assert tensor.shape == (3, 40, 20)  # displayed upright: 20 wide, 40 high
    assert tensor[0, 5, 10] > 0.8 and tensor[0, 35, 10] < 0.2  # red is now the top half


def test_dataset_reads_grayscale_rgba_and_16bit_images(tmp_path):
    paths = write_mode_images(tmp_path / "images")
    images = [{"id": i, "file_name": p.name, "width": 20, "height": 12} for i, p in enumerate(paths.values(), 1)]
    anns = [{"image_id": i, "category_id": 1, "bbox": [2, 2, 8, 6]} for i in range(1, 4)]
    folder, ann = write_coco(tmp_path, images, anns)
    ds = CocoDetection(folder, ann, DataConfig(image_size=40), train=False)
    for i in range(3):
        image, target = ds[i]
        assert image.shape == (3, 24, 40)
        torch.testing.assert_close(target["boxes"], torch.tensor([[6 / 20, 5 / 12, 8 / 20, 6 / 12]]),
                                   atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------- transforms
def test_horizontal_flip_mirrors_image_and_boxes():
    image = torch.rand(3, 80, 100)
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 100.0, 5.0]])
    flip = DetectionTransform(DataConfig(image_size=100, hflip_prob=1.0, color_jitter=0.0), train=True)

    out_image, out_boxes = flip(image, boxes)

    torch.testing.assert_close(out_image, image.flip(-1))
    torch.testing.assert_close(out_boxes, torch.tensor([[70.0, 20.0, 90.0, 40.0], [0.0, 0.0, 100.0, 5.0]]))
    assert type(out_boxes) is torch.Tensor


def test_horizontal_flip_after_resize():
    image = torch.rand(3, 80, 100)
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    flip = DetectionTransform(DataConfig(image_size=50, hflip_prob=1.0, color_jitter=0.0), train=True)
    out_image, out_boxes = flip(image, boxes)
    assert out_image.shape == (3, 40, 50)
    torch.testing.assert_close(out_boxes, torch.tensor([[35.0, 10.0, 45.0, 20.0]]))


def test_evaluation_transform_never_flips():
    image = torch.rand(3, 80, 100)
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    same = DetectionTransform(DataConfig(image_size=100, hflip_prob=1.0, color_jitter=0.5), train=False)
    out_image, out_boxes = same(image, boxes)
    torch.testing.assert_close(out_image, image)
    torch.testing.assert_close(out_boxes, boxes)
