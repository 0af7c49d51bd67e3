"""`train --data DIR`: the dataset layouts labelling tools and Roboflow export, built here from BCCD, are
detected, printed, read to exactly the boxes of the COCO JSON, and trained on; a dataset without a
validation split validates on a seeded, saved, reused share of its training images."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dino_detector.config import build_config
from dino_detector.data.layout import detect_layout
from dino_detector.data.splits import VAL_SPLIT_FILE, choose_val_files
from dino_detector.spec import plan_run
from dino_detector.train import main as train_main

from test_formats import boxes_by_file

SIZES = {"train": 8, "val": 3, "test": 2}
FAST = ["--dino_model", "tiny", "--image_size", "96", "--num_queries", "5", "--decoder_layers", "1",
        "--hidden_dim", "32", "--dim_feedforward", "64", "--num_heads", "2", "--batch_size", "4", "--epochs", "1",
        "--device", "cpu", "--num_workers", "0"]


def xml(image: dict, boxes: list[dict], names: dict[int, str], with_size: bool = True) -> str:
    size = f"<size><width>{image['width']}</width><height>{image['height']}</height><depth>3</depth></size>"
    objects = "".join(
        f"<object><name>{names[a['category_id']]}</name><difficult>0</difficult><bndbox>"
        f"<xmin>{a['bbox'][0]:g}</xmin><ymin>{a['bbox'][1]:g}</ymin><xmax>{a['bbox'][0] + a['bbox'][2]:g}</xmax>"
        f"<ymax>{a['bbox'][1] + a['bbox'][3]:g}</ymax></bndbox></object>" for a in boxes)
    return f"<annotation><filename>{image['file_name']}</filename>{size if with_size else ''}{objects}</annotation>"


class Builder:
    """Small BCCD splits (COCO dicts) and the files each layout is made of."""

    def __init__(self, bccd):
        self.images = bccd["images"]
        ref = {"train": json.loads(bccd["train"].read_text()), "val": json.loads(bccd["val"].read_text())}
        ref["test"] = ref["val"]
        self.splits = {}
        for split, n in SIZES.items():
            d = ref[split]
            start = SIZES["val"] if split == "test" else 0  # test: other val images than the val split's
            ims = d["images"][start:start + n]
            ids = {im["id"] for im in ims}
            self.splits[split] = {"images": ims, "annotations": [a for a in d["annotations"] if a["image_id"] in ids],
                                  "categories": d["categories"]}
        self.names = {c["id"]: c["name"] for c in ref["train"]["categories"]}

    def copy(self, split: str, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for im in self.splits[split]["images"]:
            shutil.copy(self.images / im["file_name"], folder)

    def boxes(self, split: str, image: dict) -> list[dict]:
        return [a for a in self.splits[split]["annotations"] if a["image_id"] == image["id"]]

    def roboflow_coco(self, root: Path) -> None:
        for split, folder in (("train", "train"), ("val", "valid"), ("test", "test")):
            self.copy(split, root / folder)
            d = self.splits[split]
            cats = [{"id": 0, "name": "cells", "supercategory": "none"}] + [
                {**c, "supercategory": "cells"} for c in d["categories"]]
            (root / folder / "_annotations.coco.json").write_text(json.dumps({**d, "categories": cats}))

    def roboflow_yolo(self, root: Path) -> None:
        for split, folder in (("train", "train"), ("val", "valid"), ("test", "test")):
            self.copy(split, root / folder / "images")
            (root / folder / "labels").mkdir()
            for im in self.splits[split]["images"]:
                w, h = im["width"], im["height"]
                lines = [f"{a['category_id'] - 1} {(a['bbox'][0] + a['bbox'][2] / 2) / w!r} "
                         f"{(a['bbox'][1] + a['bbox'][3] / 2) / h!r} {a['bbox'][2] / w!r} {a['bbox'][3] / h!r}"
                         for a in self.boxes(split, im)]
                (root / folder / "labels" / f"{Path(im['file_name']).stem}.txt").write_text("\n".join(lines))
        names = [self.names[k] for k in sorted(self.names)]
        (root / "data.yaml").write_text(f"train: ../train/images\nval: ../valid/images\ntest: ../test/images\n"
                                        f"nc: {len(names)}\nnames: {names}\n")

    def coco_root(self, root: Path) -> None:
        (root / "annotations").mkdir(parents=True)
        for split in ("train", "val"):
            self.copy(split, root / f"{split}2017")
            (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(self.splits[split]))

    def voc_lowercase(self, root: Path) -> None:
        """annotations/ + images/, no ImageSets: the train split only (the layout splits off validation)."""
        self.copy("train", root / "images")
        (root / "annotations").mkdir()
        for im in self.splits["train"]["images"]:
            (root / "annotations" / f"{Path(im['file_name']).stem}.xml").write_text(
                xml(im, self.boxes("train", im), self.names))

    def labelimg_flat(self, root: Path) -> None:
        """XML beside every image; every other file leaves out <size> (read from the image header)."""
        self.copy("train", root)
        for i, im in enumerate(self.splits["train"]["images"]):
            (root / f"{Path(im['file_name']).stem}.xml").write_text(
                xml(im, self.boxes("train", im), self.names, with_size=i % 2 == 0))


LAYOUTS = {  # name -> (kind printed, splits found)
    "roboflow_coco": ("Roboflow COCO export", {"train", "val", "test"}),
    "roboflow_yolo": ("YOLO (data.yaml)", {"train", "val", "test"}),
    "coco_root": ("COCO root", {"train", "val"}),
    "voc_lowercase": ("Pascal VOC", {"train"}),
    "labelimg_flat": ("LabelImg folder", {"train"}),
}


@pytest.fixture(scope="module")
def datasets(bccd, tmp_path_factory) -> tuple[Builder, dict[str, Path]]:
    builder, roots = Builder(bccd), {}
    for name in LAYOUTS:
        roots[name] = tmp_path_factory.mktemp(name)
        getattr(builder, name)(roots[name])
    return builder, roots


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_data_folder_is_detected_read_exactly_and_trained_on(name, datasets, tmp_path, capsys):
    builder, roots = datasets
    kind, splits = LAYOUTS[name]
    layout = detect_layout(roots[name])
    assert layout.kind.startswith(kind) and set(layout.splits) == splits
    out = tmp_path / "run"
    assert train_main(["--data", str(roots[name]), *FAST, "--output_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"dataset {roots[name]}: {kind}" in printed and "classes (3): Platelets, RBC, WBC" in printed
    sources = plan_run(build_config(data=str(roots[name]), output_dir=str(out))).sources
    read = {}
    for role in ("train", "val", "test"):
        source = getattr(sources, role)
        if source is not None:
            assert [c["name"] for c in source.coco.dataset["categories"]] == ["Platelets", "RBC", "WBC"]
            read.update(boxes_by_file(source.coco.dataset))
    expected = {}
    for split in (splits if "val" in splits else {"train"}):
        expected.update(boxes_by_file(builder.splits[split]))
    assert read == expected  # every box of every image, the split-off validation share included
    if "test" in splits:
        test = json.loads((out / "test_metrics_final.json").read_text())
        assert test["num_images"] == SIZES["test"] and 0.0 <= test["AP"] <= 1.0
    assert (out / "val_metrics_final.json").is_file()
    predictions = json.loads((out / "val_predictions_final.json").read_text())
    ids = {1, 2, 3} if layout.format != "yolo" else {0, 1, 2}  # the dataset's own category ids
    assert predictions and {p["category_id"] for p in predictions} <= ids


def test_a_missing_validation_split_is_seeded_saved_and_reused_on_resume(datasets, tmp_path):
    _, roots = datasets
    files = [f"image_{i:03d}.jpg" for i in range(40)]
    assert choose_val_files(files, 0.2, seed=1) == choose_val_files(files, 0.2, seed=1)
    assert choose_val_files(files, 0.2, seed=1) != choose_val_files(files, 0.2, seed=2)
    assert len(choose_val_files(files, 0.2, seed=1)) == 8
    folder = str(roots["labelimg_flat"])

    def val_files(seed: int, out: Path) -> list[str]:
        sources = plan_run(build_config(data=folder, seed=seed, output_dir=str(out))).sources
        return sorted(im["file_name"] for im in sources.val.coco.dataset["images"])

    first = val_files(1, tmp_path / "a")
    assert first == val_files(1, tmp_path / "b") and first != val_files(3, tmp_path / "c")
    assert json.loads((tmp_path / "a" / VAL_SPLIT_FILE).read_text())["val_files"] == first
    # resumed with another seed, the run keeps validating on the images it started with
    out = tmp_path / "resumed"
    assert train_main(["--data", folder, *FAST, "--seed", "1", "--output_dir", str(out)]) == 0
    saved = json.loads((out / VAL_SPLIT_FILE).read_text())["val_files"]
    assert saved == first
    assert train_main(["--data", folder, *FAST, "--epochs", "2", "--seed", "3", "--output_dir", str(out),
                       "--checkpoint", str(out / "dino_detector_last.pth")]) == 0
    assert json.loads((out / VAL_SPLIT_FILE).read_text())["val_files"] == first
    metrics = json.loads((out / "val_metrics_final.json").read_text())
    assert metrics["epoch"] == 2 and metrics["num_images"] == len(first)


def test_knn_evaluation_reads_the_same_dataset_folder(datasets, tmp_path):
    from dino_detector.pretrain import main as pretrain_main

    builder, roots = datasets
    assert pretrain_main(["--eval_knn", "--data", str(roots["roboflow_coco"]), "--arch", "flexible-tiny",
                          "--knn_crop_size", "32", "--device", "cpu", "--output_dir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "knn_metrics.json").read_text())
    assert set(report["per_class_recall"]) == {"Platelets", "RBC", "WBC"}  # the parent category "cells" dropped
    boxes = {split: len(builder.splits[split]["annotations"]) for split in ("train", "val")}
    assert (report["num_train"], report["num_val"]) == (boxes["train"], boxes["val"])
