"""COCO-mini subsets: the same seed gives the same indices file, another seed another subset, and an
indices file reproduces its subset exactly."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dino_detector.config import build_config
from dino_detector.data.build import build_datasets as build_run_datasets
from dino_detector.spec import plan_run
from dino_detector.data.coco_mini import make_indices

N_IMAGES = 1100


@pytest.fixture(scope="module")
def big_coco(tmp_path_factory) -> tuple[Path, Path]:
    """1100 tiny images with one box each: more than the 1k subset, so the subset is a real choice."""
    root = tmp_path_factory.mktemp("big_coco")
    (root / "images").mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    images, anns = [], []
    for i in range(1, N_IMAGES + 1):
        Image.fromarray(pixels).save(root / "images" / f"{i:06d}.png")
        images.append({"id": i * 3, "file_name": f"{i:06d}.png", "width": 8, "height": 8})  # sparse ids
        anns.append({"id": i, "image_id": i * 3, "category_id": 5, "bbox": [1, 1, 4, 4], "area": 16, "iscrowd": 0})
    ann = root / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 5, "name": "dot"}]}))
    return root / "images", ann


def build_datasets(cfg):
    """The datasets a run of ``cfg`` trains and validates on."""
    plan = plan_run(cfg)
    return build_run_datasets(plan.spec, plan.sources)


def mini_config(big_coco, out: Path, **overrides):
    images, ann = big_coco
    return build_config("standard", train_images=str(images), train_annotations=str(ann), val_images=str(images),
                        val_annotations=str(ann), use_coco_mini=True, output_dir=str(out), image_size=8,
                        **overrides)


def test_same_seed_same_indices_file_other_seed_other_subset(big_coco, tmp_path):
    train_a, val_a = build_datasets(mini_config(big_coco, tmp_path / "a", coco_mini_seed=7))
    train_b, _ = build_datasets(mini_config(big_coco, tmp_path / "b", coco_mini_seed=7))
    train_c, _ = build_datasets(mini_config(big_coco, tmp_path / "c", coco_mini_seed=8))
    file_a = tmp_path / "a" / "coco_mini_1k_seed7_indices.json"
    file_b = tmp_path / "b" / "coco_mini_1k_seed7_indices.json"
    assert file_a.read_bytes() == file_b.read_bytes()
    assert (tmp_path / "c" / "coco_mini_1k_seed8_indices.json").is_file()
    assert len(train_a) == 1000 and len(val_a) == 200  # the validation subset is a fifth of the training one
    assert train_a.ids == train_b.ids and train_a.ids != train_c.ids
    assert len(set(train_a.ids) ^ set(train_c.ids)) > 50
    saved = json.loads(file_a.read_text())
    assert saved["train_image_ids"] == train_a.ids and saved["val_image_ids"] == val_a.ids
    assert (saved["size"], saved["seed"]) == ("1k", 7)


def test_indices_file_reproduces_the_subset_exactly(big_coco, tmp_path):
    first, first_val = build_datasets(mini_config(big_coco, tmp_path / "first", coco_mini_seed=3))
    indices = tmp_path / "first" / "coco_mini_1k_seed3_indices.json"
    again, again_val = build_datasets(mini_config(big_coco, tmp_path / "again", coco_mini_seed=99,
                                                  coco_mini_indices_file=str(indices)))
    assert again.ids == first.ids and again_val.ids == first_val.ids


def test_subset_sizes_and_errors():
    ids = list(range(20000))
    assert [len(make_indices(s, 0, ids, ids)["train_image_ids"]) for s in ("1k", "5k", "10k")] == [1000, 5000, 10000]
    assert len(make_indices("5k", 0, ids, ids)["val_image_ids"]) == 1000
    with pytest.raises(ValueError, match="coco_mini_size"):
        make_indices("2k", 0, ids, ids)


def test_indices_of_another_dataset_are_a_clear_error(big_coco, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"size": "1k", "seed": 1, "train_image_ids": [1, 2, 4]}))  # ids are multiples of 3
    with pytest.raises(ValueError, match="not in"):
        build_datasets(mini_config(big_coco, tmp_path / "x", coco_mini_indices_file=str(bad)))
