"""VOC, YOLO and Hugging Face datasets load into the same targets as COCO JSON, and train end to end."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
import yaml

from dino_detector.config import DataConfig
from dino_detector.data.build import open_source
from dino_detector.data.coco import CocoDetection
from dino_detector.data.formats import detect_format, read_voc, read_yolo
from dino_detector.train import main as train_main

def boxes_by_file(coco: dict) -> dict[str, list[tuple]]:
    """file name -> sorted (category name, x, y, w, h) tuples, rounded: a format-free view of a split."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {im["id"]: Path(im["file_name"]).name for im in coco["images"]}
    out: dict[str, list[tuple]] = {f: [] for f in files.values()}
    for a in coco["annotations"]:
        if a.get("iscrowd", 0) or a["image_id"] not in files:
            continue
        out[files[a["image_id"]]].append((names[a["category_id"]], *(round(v, 3) for v in a["bbox"])))
    return {f: sorted(v) for f, v in out.items()}


@pytest.fixture(scope="module")
def bccd_root(bccd) -> Path:
    return bccd["images"].parent


@pytest.mark.parametrize("split", ["train", "val"])
def test_voc_folder_gives_exactly_the_boxes_of_the_coco_json(bccd, bccd_root, split):
    converted = read_voc(bccd_root, split)
    reference = json.loads(bccd[split].read_text())
    assert [c["name"] for c in converted.coco["categories"]] == [c["name"] for c in reference["categories"]]
    assert [c["id"] for c in converted.coco["categories"]] == [c["id"] for c in reference["categories"]]
    assert boxes_by_file(converted.coco) == boxes_by_file(reference)
    assert len(converted.coco["annotations"]) == len(reference["annotations"])
    assert converted.images_dir == bccd["images"]
    if split == "train":  # BloodImage_00343 holds a zero-size box the COCO conversion left out: dropped, counted
        assert converted.problems["zero-area box dropped"] == 1


def test_voc_split_file_and_format_detection(bccd, bccd_root):
    split_file = bccd_root / "ImageSets" / "Main" / "val.txt"
    assert detect_format(split_file) == "voc" and detect_format(bccd_root) == "voc"
    assert detect_format(bccd["val"]) == "coco"
    assert boxes_by_file(read_voc(split_file).coco) == boxes_by_file(read_voc(bccd_root, "val").coco)


def test_voc_difficult_objects_become_crowd_and_are_not_trained_on(tmp_path):
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    from PIL import Image
    Image.new("RGB", (50, 40), (90, 90, 90)).save(root / "JPEGImages" / "a.jpg")
    objects = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{x}</xmin><ymin>5</ymin>"
        f"<xmax>{x + 10}</xmax><ymax>15</ymax></bndbox></object>" for n, d, x in (("cat", 0, 2), ("dog", 1, 20)))
    (root / "Annotations" / "a.xml").write_text(
        f"<annotation><filename>a.jpg</filename><size><width>50</width><height>40</height></size>{objects}"
        "</annotation>")
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\n")
    converted = read_voc(root)
    assert [a["iscrowd"] for a in converted.coco["annotations"]] == [0, 1]
    ds = CocoDetection(converted.images_dir, converted.coco, DataConfig(image_size=50), train=False, name="voc")
    assert ds.class_names == ["cat", "dog"] and ds.skipped["crowd"] == 1
    assert ds[0][1]["labels"].tolist() == [0]


def write_yolo_copy(bccd, bccd_root: Path, dest: Path) -> Path:
    """A YOLO-format copy of BCCD (a few images per split) made from the VOC boxes."""
    names = ["Platelets", "RBC", "WBC"]
    for split, count in (("train", 12), ("val", 6)):
        converted = read_voc(bccd_root, split)
        files = {im["id"]: im for im in converted.coco["images"][:count]}
        (dest / "images" / split).mkdir(parents=True)
        (dest / "labels" / split).mkdir(parents=True)
        lines: dict[int, list[str]] = {i: [] for i in files}
        for a in converted.coco["annotations"]:
            if a["image_id"] in files:
                im = files[a["image_id"]]
                x, y, w, h = a["bbox"]
                lines[a["image_id"]].append(f"{a['category_id'] - 1} {(x + w / 2) / im['width']:.6f} "
                                            f"{(y + h / 2) / im['height']:.6f} {w / im['width']:.6f} "
                                            f"{h / im['height']:.6f}")
        for image_id, im in files.items():
            shutil.copy(bccd["images"] / im["file_name"], dest / "images" / split / im["file_name"])
            (dest / "labels" / split / f"{Path(im['file_name']).stem}.txt").write_text("\n".join(lines[image_id]))
    (dest / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": "images/train", "val": "images/val",
                                                    "names": dict(enumerate(names))}))
    return dest


def test_yolo_copy_of_bccd_reads_the_same_boxes(bccd, bccd_root, tmp_path):
    root = write_yolo_copy(bccd, bccd_root, tmp_path / "yolo")
    assert detect_format(root) == "yolo"
    converted = read_yolo(root, "val")
    voc = boxes_by_file(read_voc(bccd_root, "val").coco)
    got = boxes_by_file(converted.coco)
    assert len(got) == 6 and [c["name"] for c in converted.coco["categories"]] == ["Platelets", "RBC", "WBC"]
    for file_name, boxes in got.items():
        assert len(boxes) == len(voc[file_name])
        for (n1, *b1), (n2, *b2) in zip(boxes, voc[file_name]):
            assert n1 == n2 and max(abs(u - v) for u, v in zip(b1, b2)) < 0.01  # 6-decimal normalised text


def small_train_args(out: Path) -> list[str]:
    return ["--dino_model", "tiny", "--no_pretrained", "--image_size", "96", "--batch_size", "4",
            "--num_queries", "10", "--decoder_layers", "1", "--device", "cpu", "--num_workers", "0",
            "--epochs", "1", "--output_dir", str(out)]


def test_training_on_the_yolo_copy_writes_the_same_metrics_layout(bccd, bccd_root, tmp_path):
    root = write_yolo_copy(bccd, bccd_root, tmp_path / "yolo")
    with contextlib.redirect_stdout(io.StringIO()):
        assert train_main(["--train_annotations", str(root), "--val_annotations", str(root / "data.yaml"),
                           *small_train_args(tmp_path / "run")]) == 0
    metrics = json.loads((tmp_path / "run" / "val_metrics_final.json").read_text())
    assert metrics["num_images"] == 6 and set(metrics["per_class"]) == {"Platelets", "RBC", "WBC"}
    predictions = json.loads((tmp_path / "run" / "val_predictions_final.json").read_text())
    assert predictions and {p["category_id"] for p in predictions} <= {0, 1, 2}


def test_training_with_data_format_voc_on_the_bccd_folder(bccd_root, tmp_path):
    with contextlib.redirect_stdout(io.StringIO()):
        code = train_main(["--data_format", "voc", "--train_annotations", str(bccd_root), "--val_annotations",
                           str(bccd_root), "--debug", "--debug_samples", "4", "--debug_epochs", "1",
                           *small_train_args(tmp_path / "voc_run")])
    assert code == 0
    metrics = json.loads((tmp_path / "voc_run" / "val_metrics_final.json").read_text())
    assert metrics["num_images"] == 4 and set(metrics["per_class"]) == {"Platelets", "RBC", "WBC"}


def test_hugging_face_dataset_saved_to_disk_with_split_slicing(bccd, bccd_root, tmp_path):
    datasets = pytest.importorskip("datasets")
    converted = read_voc(bccd_root, "val")
    names = [c["name"] for c in converted.coco["categories"]]
    rows = {"image": [], "objects": []}
    for im in converted.coco["images"][:8]:
        anns = [a for a in converted.coco["annotations"] if a["image_id"] == im["id"]]
        rows["image"].append(str(bccd["images"] / im["file_name"]))
        rows["objects"].append({"bbox": [a["bbox"] for a in anns], "category": [a["category_id"] - 1 for a in anns]})
    features = datasets.Features({
        "image": datasets.Image(),
        "objects": {"bbox": datasets.Sequence(datasets.Sequence(datasets.Value("float32"), length=4)),
                    "category": datasets.Sequence(datasets.ClassLabel(names=names))}})
    saved = tmp_path / "bccd_hf"
    datasets.DatasetDict({"validation": datasets.Dataset.from_dict(rows, features=features)}).save_to_disk(saved)

    src = open_source(str(tmp_path / "hf_images"), str(saved), "hf", "val", hf_split="validation[2:6]")
    coco = src.coco.dataset
    assert [c["name"] for c in coco["categories"]] == names and len(coco["images"]) == 4
    expected = boxes_by_file({**converted.coco, "images": converted.coco["images"][2:6],
                              "categories": [{**c, "id": c["id"] - 1} for c in converted.coco["categories"]],
                              "annotations": [{**a, "category_id": a["category_id"] - 1}
                                              for a in converted.coco["annotations"]]})
    got = boxes_by_file(coco)
    assert sorted(got.values()) == sorted(expected.values())  # files are renamed, boxes are the same
    ds = CocoDetection(src.images, coco, DataConfig(image_size=64), train=False, name=src.name)
    assert ds[0][0].shape[0] == 3 and len(ds) == 4
