"""Training augmentation: multi-scale sizes, crops, rotations with re-fitted boxes, --no_flip; seeded."""
from __future__ import annotations

import pytest
import torch

from dino_detector.config import DataConfig, build_config
from dino_detector.data.transforms import SCALE_FACTORS, DetectionTransform


def square_object(h: int = 120, w: int = 160, box=(40, 30, 80, 70)) -> tuple[torch.Tensor, torch.Tensor]:
    """A dark image with one bright square object and its box (xyxy pixels)."""
    image = torch.zeros(3, h, w)
    x0, y0, x1, y1 = box
    image[:, y0:y1, x0:x1] = 1.0
    return image, torch.tensor([list(map(float, box))])


def no_colour(**kw) -> DataConfig:
    return DataConfig(color_jitter=0.0, hflip_prob=0.0, **kw)


def test_multi_scale_draws_detr_sizes_scaled_to_the_evaluation_size():
    assert SCALE_FACTORS[0] == pytest.approx(480 / 800) and SCALE_FACTORS[-1] == 1.0 and len(SCALE_FACTORS) == 11
    image, boxes = square_object()
    detr = DetectionTransform(no_colour(multi_scale=True), train=True)  # min_size 800, max_size 1333
    torch.manual_seed(0)
    short_sides = {min(detr(image, boxes)[0].shape[-2:]) for _ in range(60)}
    assert short_sides <= set(range(480, 801, 32)) and len(short_sides) >= 6
    small = DetectionTransform(no_colour(multi_scale=True, image_size=200), train=True)
    long_sides = {max(small(image, boxes)[0].shape[-2:]) for _ in range(60)}
    assert min(long_sides) >= 120 and max(long_sides) == 200  # 60-100 % of --image_size
    fixed = DetectionTransform(no_colour(multi_scale=True, image_size=200), train=False)
    assert fixed(image, boxes)[0].shape[-2:] == (150, 200)  # evaluation: always the evaluation size


def test_boxes_follow_the_object_through_scale_and_crop():
    image, boxes = square_object()
    transform = DetectionTransform(no_colour(multi_scale=True, image_size=160, crop_prob=1.0,
                                             crop_min_fraction=0.6), train=True)
    torch.manual_seed(1)
    for _ in range(20):
        out, bxs = transform(image, boxes)
        h, w = out.shape[-2:]
        assert (bxs[:, 0::2] >= 0).all() and (bxs[:, 2] <= w).all() and (bxs[:, 3] <= h).all()
        x0, y0, x1, y1 = bxs[0].round().int().tolist()
        if x1 - x0 > 4 and y1 - y0 > 4:  # the object is still in the crop: the box sits on it
            assert out[0, y0 + 1: y1 - 1, x0 + 1: x1 - 1].mean() > 0.9


def test_rotation_refits_the_box_around_the_rotated_object():
    image, boxes = square_object()
    transform = DetectionTransform(no_colour(image_size=160, rotation_degrees=15.0), train=True)
    torch.manual_seed(2)
    grew = 0
    for _ in range(10):
        out, bxs = transform(image, boxes)
        x0, y0, x1, y1 = bxs[0].tolist()
        ys, xs = torch.nonzero(out[0] > 0.5, as_tuple=True)  # the rotated object's pixels
        assert x0 <= xs.min() + 1 and xs.max() <= x1 + 1 and y0 <= ys.min() + 1 and ys.max() <= y1 + 1
        grew += (x1 - x0) > 41  # a rotated square needs a larger axis-aligned box
    assert grew >= 5


def test_no_flip_turns_flipping_off_and_presets_can_enable_augmentation():
    image, boxes = square_object()
    cfg = build_config("standard", flip=False, hflip_prob=1.0, color_jitter=0.0, image_size=160)
    assert cfg.data.flip is False
    out, bxs = DetectionTransform(cfg.data, train=True)(image, boxes)
    torch.testing.assert_close(out, image)
    torch.testing.assert_close(bxs, boxes)
    dinov3 = build_config("detr-dinov3").data
    assert dinov3.multi_scale and dinov3.rotation_degrees > 0 and dinov3.flip and dinov3.color_jitter > 0


def test_augmentation_repeats_with_the_seed():
    image, boxes = square_object()
    transform = DetectionTransform(DataConfig(image_size=160, multi_scale=True, crop_prob=0.5,
                                              rotation_degrees=10.0, color_jitter=0.3), train=True)
    torch.manual_seed(5)
    first = [transform(image, boxes) for _ in range(3)]
    torch.manual_seed(5)
    second = [transform(image, boxes) for _ in range(3)]
    for (a, ab), (b, bb) in zip(first, second):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(ab, bb)


def test_uint8_and_float_images_give_the_same_training_sample():
    """The dataset hands training images over as uint8 (resizing them is 4x cheaper than float ones): the
    result is a float32 image in 0..1, equal to the float input's within resampling's rounding, same boxes."""
    image, boxes = square_object()
    image = image * 0.6 + 0.2  # grey levels away from 0 and 1, where colour jitter clamps
    as_bytes = (image * 255).round().to(torch.uint8)
    transform = DetectionTransform(DataConfig(image_size=96, scale_jitter=0.25, color_jitter=0.3), train=True)
    for seed in range(4):
        torch.manual_seed(seed)
        from_float = transform(image, boxes)
        torch.manual_seed(seed)
        from_bytes = transform(as_bytes, boxes)
        assert from_bytes[0].dtype == torch.float32 and from_bytes[0].is_contiguous()
        assert 0 <= from_bytes[0].min() and from_bytes[0].max() <= 1
        assert from_bytes[0].shape == from_float[0].shape
        assert (from_bytes[0] - from_float[0]).abs().max() < 3 / 255
        torch.testing.assert_close(from_bytes[1], from_float[1])
