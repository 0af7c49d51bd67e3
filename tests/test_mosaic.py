"""Mosaic composition, scale jitter and the schedule that turns strong augmentation off at the end of training:
boxes stay on their objects (property test), sizes stay in range, the switch happens when it should."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st
from PIL import Image

from dino_detector.config import DataConfig
from dino_detector.data.build import ResumableSampler
from dino_detector.data.coco import CocoDetection
from dino_detector.data.mosaic import FILL, MosaicPart, compose_mosaic
from dino_detector.data.transforms import DetectionTransform
from dino_detector.runtime.schedule import Clock, off_for_final_share, strong_augmentation_window

# eight colours, one per object of a mosaic (label k is drawn in PALETTE[k]): none is the grey background,
# and any two differ by 0.6 in some channel
PALETTE = torch.tensor([[a, b, c] for a in (0.2, 0.8) for b in (0.2, 0.8) for c in (0.2, 0.8)])
assert not (PALETTE == FILL).all(dim=1).any()


def part_with_objects(h: int, w: int, rects: list[tuple[float, float, float, float]], first_label: int) -> MosaicPart:
    """A grey h x w image (the canvas fill: no blend of it with a palette colour is another palette colour)
    with one filled rectangle per ``rects`` entry (fractions x0, y0, x1, y1 of the
    image, each inside its own half of the image so none overlaps), label ``first_label + k``."""
    image, boxes = torch.full((3, h, w), FILL), []
    for k, (fx0, fy0, fx1, fy1) in enumerate(rects):
        half = w / len(rects)  # object k lives in the k-th vertical strip
        x0, x1 = round(k * half + fx0 * half), round(k * half + fx1 * half)
        y0, y1 = round(fy0 * h), round(fy1 * h)
        image[:, y0:y1, x0:x1] = PALETTE[first_label + k].view(3, 1, 1)
        boxes.append([x0, y0, x1, y1])
    labels = torch.arange(first_label, first_label + len(rects))
    return MosaicPart(image, torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), labels)


def colour_mask(image: torch.Tensor, label: int) -> torch.Tensor:
    return ((image - PALETTE[label].view(3, 1, 1)).abs() < 0.05).all(dim=0)


def solid(image: torch.Tensor, label: int) -> torch.Tensor:
    """Pixels of the label's colour whose 3 x 3 neighbourhood is too (resize blends at edges left out)."""
    mask = colour_mask(image, label).float()[None, None]
    return -torch.nn.functional.max_pool2d(-mask, 3, stride=1, padding=1)[0, 0] > 0.5


rect = st.tuples(st.floats(0.0, 0.4), st.floats(0.0, 0.4), st.floats(0.6, 1.0), st.floats(0.6, 1.0))
image_spec = st.tuples(st.integers(24, 90), st.integers(24, 90), st.lists(rect, min_size=0, max_size=2))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(specs=st.lists(image_spec, min_size=4, max_size=4), side=st.sampled_from([48, 64, 80]),
       seed=st.integers(0, 10_000))
def test_every_mosaic_box_stays_on_its_object(specs, side, seed):
    parts = [part_with_objects(h, w, rects, 2 * i) for i, (h, w, rects) in enumerate(specs)]
    torch.manual_seed(seed)
    out = compose_mosaic(parts, side)
    image, boxes, labels = out.image, out.boxes, out.labels
    h, w = image.shape[-2:]
    first_h, first_w = specs[0][:2]
    assert side <= max(h, w) <= 2 * side and (h > w) == (first_h > first_w)  # the first image's shape
    assert abs(min(h, w) / max(h, w) - min(first_h, first_w) / max(first_h, first_w)) <= 1 / max(h, w)
    assert len(boxes) == len(labels) and (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= w).all()
    assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= h).all() and (boxes[:, 2:] > boxes[:, :2]).all()
    assert len(set(labels.tolist())) == len(labels)  # one box per object
    for box, label in zip(boxes, labels.tolist()):
        x0, y0, x1, y1 = box.tolist()
        inner = image[:, int(y0) + 2: int(y1) - 1, int(x0) + 2: int(x1) - 1]  # 2 px off the resized edges
        if inner.numel():
            assert colour_mask(inner, label).float().mean() > 0.99, (box, label)
        # the box holds every visible pixel of its object (the object is a rectangle: box = its visible part)
        ys, xs = torch.nonzero(solid(image, label), as_tuple=True)
        if len(xs):
            assert xs.min() >= x0 - 1 and xs.max() <= x1 and ys.min() >= y0 - 1 and ys.max() <= y1
    # an object of which most shows has its box (min_visible is 0.25 of its area)
    for part in parts:
        scale = side / max(part.image.shape[-2:])
        for box, label in zip(part.boxes, part.labels.tolist()):
            area = float((box[2] - box[0]) * (box[3] - box[1])) * scale ** 2
            visible = int(colour_mask(image, label).sum())
            if visible >= 0.5 * area and area >= 36:
                assert label in labels.tolist(), (label, visible, area)


def test_mosaic_is_seeded_and_checks_its_inputs():
    parts = [part_with_objects(60, 80, [(0.1, 0.1, 0.9, 0.9)], i) for i in range(4)]
    torch.manual_seed(3)
    a = compose_mosaic(parts, 64)
    torch.manual_seed(3)
    b = compose_mosaic(parts, 64)
    assert torch.equal(a.image, b.image) and torch.equal(a.boxes, b.boxes)
    with pytest.raises(ValueError, match="4 images"):
        compose_mosaic(parts[:3], 64)
    with pytest.raises(ValueError, match="zoom"):
        compose_mosaic(parts, 64, zoom_range=(0.0, 1.0))


def test_uint8_mosaics_match_float_ones_with_a_mid_grey_fill():
    """Training images stay uint8 until resized (data loading speed): a uint8 mosaic is the float one in
    0..255, its canvas 128 (FILL), with the same boxes; parts of two dtypes are a ValueError."""
    floats = [part_with_objects(60, 80, [(0.1, 0.1, 0.5, 0.9)], i) for i in range(4)]
    bytes_ = [MosaicPart((p.image * 255).round().to(torch.uint8), p.boxes, p.labels) for p in floats]
    torch.manual_seed(4)
    a = compose_mosaic(floats, 64, zoom_range=(1.0, 1.0), min_visible=0.0)
    torch.manual_seed(4)
    b = compose_mosaic(bytes_, 64, zoom_range=(1.0, 1.0), min_visible=0.0)
    assert b.image.dtype == torch.uint8 and torch.equal(a.boxes, b.boxes) and torch.equal(a.labels, b.labels)
    assert (b.image.float() - a.image * 255).abs().max() <= 1.0  # resampling rounds to whole levels
    grey = (a.image == FILL).all(dim=0)
    assert grey.any() and (b.image[:, grey] == 128).all()
    with pytest.raises(ValueError, match="one dtype"):
        compose_mosaic([*floats[:2], *bytes_[2:]], 64)


def test_zoom_one_shows_all_four_images_at_their_resized_size():
    """At zoom 1 the window is the whole 2 side canvas: the four images are on it at their resized size, the
    centre's quadrants, so objects keep their size (cut only where an image passes the canvas edge)."""
    parts = [part_with_objects(64, 64, [(0.1, 0.1, 0.9, 0.9)], i) for i in range(4)]
    for seed in range(5):
        torch.manual_seed(seed)
        out = compose_mosaic(parts, 32, zoom_range=(1.0, 1.0), min_visible=0.0)
        assert out.image.shape[-1] == 64 and sorted(out.labels.tolist()) == [0, 1, 2, 3]
        sides = out.boxes[:, 2:] - out.boxes[:, :2]
        # each object spans pixels 6..58 of its 64-px image: 26 of the 32 px it is resized to, 3 px off the edges
        assert (sides <= 26).all() and (sides == 26).any()
        right, bottom = out.boxes[0, 2], out.boxes[0, 3]  # image 0 ends at the centre, image 3 starts there
        assert out.boxes[3, 0] - right == 6 and out.boxes[3, 1] - bottom == 6


def test_scale_jitter_draws_sizes_in_its_range_and_excludes_multi_scale():
    image, boxes = torch.zeros(3, 120, 160), torch.tensor([[40.0, 30.0, 80.0, 70.0]])
    jitter = DetectionTransform(DataConfig(image_size=200, scale_jitter=0.3, color_jitter=0.0), train=True)
    torch.manual_seed(0)
    sides = [max(jitter(image, boxes)[0].shape[-2:]) for _ in range(200)]
    assert 140 <= min(sides) < 150 and 250 < max(sides) <= 260 and len(set(sides)) > 50  # 200 x [0.7, 1.3]
    assert {max(jitter(image, boxes, strong=False)[0].shape[-2:]) for _ in range(5)} == {200}
    evaluation = DetectionTransform(DataConfig(image_size=200, scale_jitter=0.3), train=False)
    assert max(evaluation(image, boxes)[0].shape[-2:]) == 200
    for bad, match in [(dict(scale_jitter=0.3, multi_scale=True), "choose one"), (dict(scale_jitter=1.0), "scale_jitter"),
                       (dict(mosaic_prob=1.5), "mosaic_prob"), (dict(strong_aug_off_fraction=-0.1), "strong_aug")]:
        with pytest.raises(ValueError, match=match):
            DetectionTransform(DataConfig(**bad), train=True)


def test_strong_augmentation_is_off_for_the_final_share():
    by_epochs = off_for_final_share(0.25, epochs=8)
    assert [by_epochs(Clock(0, e, 0.0)) for e in range(8)] == [1.0] * 6 + [0.0] * 2
    by_time = off_for_final_share(0.2, epochs=1000, budget_s=600.0)
    assert by_time(Clock(0, 3, 479.0)) == 1.0 and by_time(Clock(0, 3, 480.0)) == 0.0
    assert off_for_final_share(0.0, epochs=4)(Clock(0, 3, 1e9)) == 1.0
    assert off_for_final_share(1.0, epochs=4)(Clock(0, 0, 0.0)) == 0.0


def test_strong_augmentation_starts_at_its_epoch_and_a_shorter_run_never_sees_it():
    window = strong_augmentation_window(3, 0.25, epochs=8)
    assert [window(Clock(0, e, 0.0)) for e in range(8)] == [False] * 3 + [True] * 3 + [False] * 2
    by_time = strong_augmentation_window(2, 0.2, epochs=1000, budget_s=600.0)  # a 10-minute budget
    assert not by_time(Clock(0, 1, 100.0)) and by_time(Clock(0, 2, 100.0)) and not by_time(Clock(0, 9, 480.0))
    assert [strong_augmentation_window(0, 0.0, epochs=4)(Clock(0, e, 0.0)) for e in range(4)] == [True] * 4
    late = strong_augmentation_window(6, 0.5, epochs=8)  # the final share starts before the start epoch
    assert not any(late(Clock(0, e, 0.0)) for e in range(8))
    with pytest.raises(ValueError, match="start epoch"):
        strong_augmentation_window(-1, 0.1, epochs=4)
    with pytest.raises(ValueError, match="strong_aug_start_epoch"):
        DetectionTransform(DataConfig(strong_aug_start_epoch=-2), train=True)


@pytest.fixture
def rectangles_coco(tmp_path: Path) -> tuple[Path, Path]:
    """Eight 96 x 128 PNG images, each with two coloured rectangles, and their COCO file."""
    images, anns = [], []
    for i in range(8):
        part = part_with_objects(96, 128, [(0.1, 0.2, 0.8, 0.7), (0.2, 0.3, 0.9, 0.9)], 2 * (i % 4))
        Image.fromarray((part.image.permute(1, 2, 0) * 255).round().byte().numpy()).save(tmp_path / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 128, "height": 96})
        for k, (x0, y0, x1, y1) in enumerate(part.boxes.tolist()):
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(part.labels[k]) + 1,
                         "bbox": [x0, y0, x1 - x0, y1 - y0]})
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": k + 1, "name": f"c{k}"} for k in range(8)]}))
    return tmp_path, path


def test_mosaic_items_of_a_coco_dataset_keep_boxes_on_objects(rectangles_coco):
    folder, ann = rectangles_coco
    cfg = DataConfig(image_size=96, mosaic_prob=1.0, color_jitter=0.0, hflip_prob=0.0)
    data = CocoDetection(folder, ann, cfg, train=True)
    torch.manual_seed(0)
    counts = []
    for i in range(6):
        image, target = data[(i, True)]
        h, w = image.shape[-2:]
        assert max(h, w) == 96
        boxes = target["boxes"] * torch.tensor([w, h, w, h])  # cxcywh pixels
        counts.append(len(boxes))
        for (cx, cy, bw, bh), label in zip(boxes.tolist(), target["labels"].tolist()):
            inner = image[:, int(cy - bh / 2) + 2: int(cy + bh / 2) - 1, int(cx - bw / 2) + 2: int(cx + bw / 2) - 1]
            if inner.numel():
                # label k is category k + 1, drawn in PALETTE[k]; PNG rounding stays well inside 0.05
                assert colour_mask(inner, label).float().mean() > 0.95
    assert max(counts) > 2  # objects of more than one image in an item
    plain, target = data[(0, False)]  # strong augmentation off: the image itself, resized
    assert plain.shape[-2:] == (72, 96) and len(target["boxes"]) == 2
    evaluation = CocoDetection(folder, ann, cfg, train=False)  # plain indices, never a mosaic
    assert evaluation[0][0].shape[-2:] == (72, 96) and len(evaluation[0][1]["boxes"]) == 2


def test_training_sampler_carries_the_schedule_with_each_index():
    sampler = ResumableSampler(list(range(10)), num_replicas=1, rank=0, shuffle=True, seed=0)
    assert all(isinstance(i, int) for i in sampler)  # no schedule set: plain indices (pretraining)
    sampler.strong = False
    items = list(sampler)
    assert sorted(i for i, _ in items) == list(range(10)) and {s for _, s in items} == {False}


def batch_sizes_of(items: list[tuple], batch_size: int) -> list[set[float]]:
    return [{f for _, _, f in items[k:k + batch_size]} for k in range(0, len(items), batch_size)]


def test_the_sampler_draws_one_training_size_per_batch_the_same_on_every_process_and_after_a_resume():
    jitter = DataConfig(image_size=96, scale_jitter=0.25)
    ranks = [ResumableSampler(list(range(20)), num_replicas=2, rank=r, shuffle=True, seed=3, batch_size=3,
                              sizes=jitter) for r in (0, 1)]
    for sampler in ranks:
        sampler.set_epoch(1)
        sampler.strong = True
    items = [list(s) for s in ranks]
    per_batch = [batch_sizes_of(i, 3) for i in items]
    assert [len(b) for b in per_batch[0]] == [1, 1, 1, 1]  # 10 indices per process: batches of 3, 3, 3, 1
    factors = [f for (f,) in per_batch[0]]
    assert per_batch[1] == per_batch[0]  # the two processes train each step at one size
    assert all(0.75 <= f <= 1.25 for f in factors) and len(set(factors)) == 4
    resumed = ranks[0]
    resumed.set_epoch(1)
    resumed.skip = 6  # a checkpoint written after two steps of batch 3
    assert list(resumed) == items[0][6:]
    resumed.set_epoch(2)
    assert batch_sizes_of(list(resumed), 3) != per_batch[0]  # another epoch, other sizes
    resumed.strong = False  # the end of training: evaluation's size, no third element
    assert {len(item) for item in resumed} == {2}
    plain = ResumableSampler(list(range(6)), num_replicas=1, rank=0, shuffle=True, seed=0, batch_size=2,
                             sizes=DataConfig(image_size=96))
    plain.strong = True
    assert {f for _, _, f in plain} == {1.0}  # no multi-scale, no jitter: the evaluation size


def test_images_of_a_training_batch_share_one_size(rectangles_coco):
    from dino_detector.data.build import make_loader
    folder, ann = rectangles_coco
    cfg = DataConfig(image_size=96, scale_jitter=0.3, mosaic_prob=0.5, color_jitter=0.0)
    data = CocoDetection(folder, ann, cfg, train=True)
    loader = make_loader(data, batch_size=4, num_workers=0, device=torch.device("cpu"), shuffle=True, seed=0,
                         sizes=cfg)
    loader.sampler.strong = True
    torch.manual_seed(0)
    sides = []
    for images, _ in loader:
        assert len({tuple(image.shape[-2:]) for image in images}) == 1  # mosaics take the images' 4:3 shape
        sides.append(max(images[0].shape[-2:]))
    assert len(sides) == 2 and all(67 <= s <= 125 for s in sides) and sides[0] != sides[1]  # 96 x [0.7, 1.3]


def test_a_run_trains_with_mosaic_after_its_first_epoch_and_turns_it_off_for_its_last_epochs(tiny_coco, tmp_path, caplog):
    import logging
    import math

    from dino_detector.runtime.checkpoint import load_checkpoint
    from dino_detector.train import main as train_main

    out = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        code = train_main(["--train_images", str(tiny_coco["images"]), "--train_annotations",
                           str(tiny_coco["annotations"]), "--dino_model", "tiny", "--no_pretrained", "--image_size",
                           "48", "--num_queries", "5", "--decoder_layers", "1", "--hidden_dim", "32", "--num_heads",
                           "2", "--dim_feedforward", "64", "--device", "cpu", "--num_workers", "0", "--batch_size",
                           "4", "--debug", "--debug_samples", "8", "--debug_epochs", "4", "--mosaic_prob", "1",
                           "--scale_jitter", "0.2", "--strong_aug_off_fraction", "0.5", "--strong_aug_start_epoch", "1",
                           "--output_dir", str(out)])
    assert code == 0
    switched = [r.getMessage() for r in caplog.records if "strong augmentation" in r.getMessage()]
    assert switched == ["strong augmentation off until epoch 2 (--strong_aug_start_epoch)",
                        "strong augmentation on from epoch 2",
                        "strong augmentation off from epoch 3 (the last 50 % of training)"]
    history = load_checkpoint(out / "dino_detector_final.pth")["history"]
    assert len(history) == 4 and all(math.isfinite(h["loss"]) for h in history)
