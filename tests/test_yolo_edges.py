"""YOLO data.yaml edge cases read as Ultralytics would (lists of folders, .txt image lists, a yaml named by a
relative path, segmentation polygons, malformed lines, unknown classes), each counted or a one-line error,
and Roboflow's empty parent category dropped only when it is one."""
from __future__ import annotations

import pytest
from PIL import Image

from dino_detector.data.coco_form import drop_empty_parent_categories
from dino_detector.data.yolo import read_yolo
from dino_detector.train import main as train_main

W, H = 80, 40


def image(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (W, H), (120, 130, 140)).save(path)


def labelled(root, folder: str, name: str, lines: list[str]) -> None:
    image(root / folder / "images" / f"{name}.jpg")
    (root / folder / "labels").mkdir(parents=True, exist_ok=True)
    (root / folder / "labels" / f"{name}.txt").write_text("\n".join(lines))


@pytest.fixture()
def yolo_root(tmp_path):
    root = tmp_path / "ds"
    labelled(root, "a", "box", ["0 0.5 0.5 0.25 0.5"])
    labelled(root, "a", "polygon", ["1 0.1 0.2 0.4 0.1 0.3 0.6 0.2 0.5"])  # a segmentation polygon
    labelled(root, "b", "bad", ["0 0.5 0.5 0.2", "x 0.5 0.5 0.2 0.2", "7 0.5 0.5 0.2 0.2", "1.5 0.5 0.5 0.1 0.1",
                                "", "1 0.25 0.25 0.5 0.5"])
    labelled(root, "c", "listed", ["0 0.5 0.5 0.5 0.5"])
    (root / "val.txt").write_text("./c/images/listed.jpg\n")
    (root / "data.yaml").write_text("train: [a/images, b/images]\nval: val.txt\nnames: {0: cat, 1: dog}\n")
    return root


def test_lists_of_folders_polygons_and_bad_lines_are_read_and_counted(yolo_root):
    train = read_yolo(yolo_root, role="train")
    files = {im["id"]: im["file_name"] for im in train.coco["images"]}
    boxes = sorted((files[a["image_id"]], a["category_id"], [round(v, 4) for v in a["bbox"]])
                   for a in train.coco["annotations"])
    assert boxes == [("a/images/box.jpg", 0, [30.0, 10.0, 20.0, 20.0]),
                     ("a/images/polygon.jpg", 1, [8.0, 4.0, 24.0, 20.0]),  # x 0.1-0.4, y 0.1-0.6 of 80 x 40
                     ("b/images/bad.jpg", 1, [0.0, 0.0, 40.0, 20.0])]
    assert train.problems == {"malformed label line": 3, "unknown category": 1,
                              "segmentation polygon read as its box": 1}
    assert [c["name"] for c in train.coco["categories"]] == ["cat", "dog"]
    val = read_yolo(yolo_root, role="val")
    assert [im["file_name"] for im in val.coco["images"]] == ["listed.jpg"] and len(val.coco["annotations"]) == 1


def test_a_relative_dataset_folder_resolves_from_the_working_directory(yolo_root, monkeypatch):
    monkeypatch.chdir(yolo_root.parent)
    assert len(read_yolo("ds", role="train").coco["images"]) == 3
    assert len(read_yolo("ds/data.yaml", role="val").coco["images"]) == 1


@pytest.mark.parametrize("yaml_text, message", [
    ("train: []\nnames: [cat]\n", "no 'train', 'val' or 'test' entry"),
    ("val: a/images\nnames: [cat, dog]\n", "has no training split to train on"),
    ("train: [a/images, missing/images]\nnames: [cat, dog]\n", "YOLO image folder not found"),
    ("train: [3]\nnames: [cat]\n", "must be a path"),
    ("train: a/images\nnames: []\n", "'names' must be a non-empty list"),
    ("train: a/images\nnames: [cat\n", "not valid YAML"),
])
def test_a_bad_data_yaml_is_one_line_on_the_command_line(yolo_root, tmp_path, capsys, yaml_text, message):
    (yolo_root / "data.yaml").write_text(yaml_text)
    assert train_main(["--data", str(yolo_root), "--device", "cpu", "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_only_an_unused_parent_named_as_supercategory_is_dropped():
    cats = [{"id": 0, "name": "cells", "supercategory": "none"}, {"id": 1, "name": "RBC", "supercategory": "cells"},
            {"id": 2, "name": "WBC", "supercategory": "cells"}]
    boxes = [{"id": 1, "image_id": 1, "category_id": 1}, {"id": 2, "image_id": 1, "category_id": 2}]
    kept, dropped = drop_empty_parent_categories({"categories": cats, "annotations": boxes})
    assert dropped == ["cells"] and [c["id"] for c in kept["categories"]] == [1, 2]
    # the parent has boxes of its own: a real class
    _, dropped = drop_empty_parent_categories({"categories": cats, "annotations": boxes + [
        {"id": 3, "image_id": 1, "category_id": 0}]})
    assert dropped == []
    # an unused category nobody names as parent stays (a class with no boxes in this split)
    flat = [{**c, "supercategory": "none"} for c in cats]
    assert drop_empty_parent_categories({"categories": flat, "annotations": boxes})[1] == []
