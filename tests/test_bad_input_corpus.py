"""A corpus of bad inputs, one case each, every one with its exact outcome, never a traceback:

- ``Raises``: a ValueError subclass from the Python API whose one-line message names the file and the problem;
- ``ExitsTwo``: from the command line (train / predict), exit code 2 and one ``error: ...`` line on stderr;
- ``Counted``: left out and counted, with the exact count in the reader's counters and in the logged summary;
- ``Works``: read right, with the exact result (a legal oddity: category id 0, a VOC file without size, ...).

Every case writes real files to its tmp_path (COCO JSON, VOC XML, YOLO folders, images, symlinks) and runs
offline on CPU; the model cases share one tiny random-weight detector (category ids 0 and 5).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dino_detector.data.coco import ORPHAN
from dino_detector.data.images import ImageReadError, to_tensor_image
from dino_detector.data.transforms import Resize, resize_for_inference
from dino_detector.predict import main as predict_main

from conftest import build_small_detector, perturb_head_
from test_yolo_edges import labelled
from bad_input_kit import (A, CAFE, CATS, Cli, Counted, Ctx, E, ExitsTwo, H, LINE, ONE, Raises, UINT8, W, Works, ZERO,
                            bomb_in_dataset, bomb_png, box, boxes_are, case, category_zero, category_zero_kept, close,
                            coco_cli, colour_is, dataset, gif, image_folder, image_is, inside, names_in, obj,
                            predict_cli, problems, same_as, skipped_count, spaced_name, train_cli, truncated, voc,
                            yolo, yolo_bad_line, zero_byte_in_dataset)


CASES = [
    # ------------------------------------------------------------------------------------------ COCO JSON
    case(lambda c: coco_cli(c, raw="{not json"), ExitsTwo(("ann.json: not valid JSON", "line 1 column 2")),
         "coco-not-json"),
    case(lambda c: dataset(c, raw=""), Raises(E, ("ann.json: not valid JSON (the file is empty)",)),
         "coco-empty-file"),
    case(lambda c: dataset(c, raw="[]"), Raises(E, ("ann.json: expected a COCO object", "got a list (a results")),
         "coco-top-level-list"),
    case(lambda c: coco_cli(c, drop=["images"]), ExitsTwo(("ann.json: has no 'images' list",)), "coco-no-images"),
    case(lambda c: dataset(c, drop=["annotations"]), Raises(E, ("ann.json: has no 'annotations' list",)),
         "coco-no-annotations"),
    case(lambda c: dataset(c, drop=["categories"]), Raises(E, ("ann.json: has no 'categories' list",)),
         "coco-no-categories"),
    case(lambda c: coco_cli(c, categories=[]), ExitsTwo(("ann.json: lists no categories",)), "coco-empty-categories"),
    case(lambda c: dataset(c, images={"1": A}), Raises(E, ("ann.json: 'images' must be a list, got a dict",)),
         "coco-images-not-a-list"),
    case(lambda c: dataset(c, anns="none"), Raises(E, ("ann.json: 'annotations' must be a list, got a str",)),
         "coco-annotations-not-a-list"),
    case(lambda c: dataset(c, images=[A, {"id": 2, "width": W, "height": H}]),
         Raises(E, ("ann.json: image 2 has no 'file_name'",)), "coco-image-without-file-name"),
    case(lambda c: coco_cli(c, anns=[box(1, 1, [1, 2, 3])]),
         ExitsTwo(("ann.json: annotation 1 has bbox [1, 2, 3]: expected 4 finite numbers",)), "coco-bbox-3-numbers"),
    case(lambda c: dataset(c, anns=[box(1, 1, [1, 2, 3, 4, 5])]),
         Raises(E, ("ann.json: annotation 1 has bbox [1, 2, 3, 4, 5]: expected 4",)), "coco-bbox-5-numbers"),
    case(lambda c: dataset(c, anns=[box(1, 1, [1, float("nan"), 3, 4])]),
         Raises(E, ("ann.json: annotation 1 has bbox [1, NaN, 3, 4]: expected 4 finite numbers",)), "coco-bbox-nan"),
    case(lambda c: dataset(c, anns=[box(1, 1, [1, 2, float("inf"), 4])]),
         Raises(E, ("ann.json: annotation 1 has bbox [1, 2, Infinity, 4]",)), "coco-bbox-infinity"),
    case(lambda c: dataset(c, anns=[box(1, 1, ["1", "2", "3", "4"])]),
         Raises(E, ('ann.json: annotation 1 has bbox ["1", "2", "3", "4"]',)), "coco-bbox-strings"),
    case(lambda c: dataset(c, anns=[{"id": 1, "image_id": 1, "category_id": 1}]),
         Raises(E, ("ann.json: annotation 1 has bbox null",)), "coco-bbox-missing"),
    case(lambda c: dataset(c, anns=ONE + [box(2, 1, [10, 10, -5, 8])]),
         Counted(lambda ds: ds.skipped["degenerate"], 1, "'degenerate': 1"), "coco-bbox-negative-size"),
    case(lambda c: dataset(c, anns=[box(1, 1, [-4, -2, 10, 10])]),
         Works(lambda ds: close(ds.targets[1][0], torch.tensor([[0.0, 0, 6, 8]]))),
         "coco-bbox-negative-origin-clipped"),
    case(lambda c: dataset(c, anns=ONE + [box(2, 99, [1, 1, 5, 5])]),
         Counted(lambda ds: ds.coco.problems[ORPHAN], 1, f"ann.json: 1 {ORPHAN}"),
         "coco-annotation-of-missing-image"),
    case(lambda c: dataset(c, images=[A, {"id": 1, "file_name": "b.jpg"}]),
         Raises(E, ("ann.json: image id 1 is listed twice (the second time for b.jpg)",)),
         "coco-duplicate-image-ids"),
    case(lambda c: dataset(c, anns=ONE + [box(1, 2, [1, 1, 5, 5])]),
         Raises(E, ("ann.json: annotation id 1 is listed twice",)), "coco-duplicate-annotation-ids"),
    case(lambda c: dataset(c, images=[A, {"id": 2, "file_name": "a.jpg"}]),
         Raises(E, ("ann.json: file a.jpg is listed twice (image ids 1 and 2)",)), "coco-same-file-twice"),
    case(lambda c: dataset(c, anns=ONE + [box(2, 1, [1, 1, 5, 5], 7)]),
         Counted(lambda ds: ds.skipped["unknown_category"], 1, "'unknown_category': 1"), "coco-unknown-category"),
    case(lambda c: dataset(c, anns=[{"id": 1, "image_id": 1, "bbox": [1, 1, 5, 5]}]),
         Raises(E, ("ann.json: annotation 1 has no integer 'category_id' (got null)",)), "coco-no-category-id"),
    case(lambda c: dataset(c, categories=CATS + [{"id": 1, "name": "again"}]),
         Raises(E, ("ann.json: category id 1 is listed twice",)), "coco-duplicate-category-ids"),
    case(lambda c: dataset(c, anns=[{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 4, 5]}]),
         Works(lambda ds: (ds.coco.anns[1]["area"], ds.coco.anns[1]["iscrowd"]) == (20, 0)),
         "coco-no-area-no-iscrowd-filled-in"),
    case(category_zero, Works(category_zero_kept), "coco-category-id-0-kept"),
    # ------------------------------------------------------------------------------------------ VOC XML
    case(lambda c: voc(c, obj(), size=""),
         Works(lambda v: image_is(v, (W, H)) and boxes_are([[2.0, 3.0, 10.0, 10.0]])(v)), "voc-no-size-from-image"),
    case(lambda c: voc(c, obj(), size=f"<size><width>0</width><height>{H}</height></size>"),
         Works(lambda v: image_is(v, (W, H)) and boxes_are([[2.0, 3.0, 10.0, 10.0]])(v)), "voc-width-0-from-image"),
    case(lambda c: voc(c, obj(), extra=[("b.xml", f"<annotation><filename>b.jpg</filename><size><width>0</width>"
                                                  f"</size>{obj()}</annotation>")]),
         Counted(problems("XML without a readable image or size"), 1, "1 XML without a readable image or size"),
         "voc-width-0-and-no-image"),
    case(lambda c: voc(c, obj() + obj(coords=(1, 2))),
         Counted(problems("object without box coordinates"), 1, "1 object without box coordinates"),
         "voc-box-without-coordinates"),
    case(lambda c: voc(c, obj() + obj(coords=(1, 2, "abc", 9))),
         Counted(problems("object without box coordinates"), 1, "1 object without box coordinates"),
         "voc-coordinate-not-a-number"),
    case(lambda c: voc(c, obj() + obj(coords=(1, 2, "nan", 9))),
         Counted(problems("object without box coordinates"), 1, "1 object without box coordinates"),
         "voc-coordinate-nan"),
    case(lambda c: (voc(c, obj(), extra=[("bad.xml", "<annotation><object>")]),
                    train_cli(c, "--data_format", "voc", "--train_annotations", str(c.tmp / "voc")))[1],
         ExitsTwo(("voc/bad.xml: not valid XML (no element found: line 1",)), "voc-invalid-xml"),
    case(lambda c: voc(c, obj() + obj(name="")),
         Counted(problems("object without a name"), 1, "1 object without a name"), "voc-object-without-name"),
    case(lambda c: voc(c, obj(), extra=[("copy.xml", f"<annotation><filename>a.jpg</filename>{obj()}</annotation>")]),
         Counted(problems("second XML for the same image left out"), 1, "1 second XML for the same image left out",
                 lambda v: len(v.coco["images"]) == 1), "voc-two-xml-for-one-image"),
    # ------------------------------------------------------------------------------------------ YOLO
    case(lambda c: yolo(c, [LINE], "train: [a/images, b/images]\nnames: [cat, dog]\n",
                        lambda r: labelled(r, "b", "y", ["1 0.5 0.5 0.5 0.5"])),
         Works(lambda y: [im["file_name"] for im in y.coco["images"]] == ["a/images/x.jpg", "b/images/y.jpg"]
               and [a["category_id"] for a in y.coco["annotations"]] == [0, 1]), "yolo-list-of-folders-in-train"),
    case(lambda c: yolo(c, ["1 0.1 0.2 0.4 0.1 0.3 0.6"]),
         Counted(problems("segmentation polygon read as its box"), 1, "1 segmentation polygon read as its box",
                 boxes_are([[8.0, 4.0, 24.0, 20.0]])), "yolo-segmentation-row"),
    case(yolo_bad_line("0 0.5 0.5 0.2 0.2 0.9"),
         Counted(problems("malformed label line"), 1, "1 malformed label line"), "yolo-six-columns"),
    case(lambda c: yolo(c, ["1.0 0.5 0.5 0.5 0.5"]),
         Works(lambda y: [a["category_id"] for a in y.coco["annotations"]] == [1] and not y.problems),
         "yolo-class-1.0-reads-as-1"),
    case(yolo_bad_line("1.5 0.5 0.5 0.2 0.2"),
         Counted(problems("malformed label line"), 1, "1 malformed label line"), "yolo-class-1.5"),
    case(yolo_bad_line("2 0.5 0.5 0.2 0.2"),
         Counted(problems("unknown category"), 1, "1 unknown category"), "yolo-class-out-of-range"),
    case(yolo_bad_line("-1 0.5 0.5 0.2 0.2"),
         Counted(problems("unknown category"), 1, "1 unknown category"), "yolo-class-negative"),
    case(yolo_bad_line("0 nan 0.5 0.2 0.2"),
         Counted(problems("malformed label line"), 1, "1 malformed label line"), "yolo-nan-value"),
    case(lambda c: yolo(c, [LINE], more=lambda r: labelled(r, "a", "empty", [])),
         Works(lambda y: (len(y.coco["images"]), len(y.coco["annotations"]), dict(y.problems)) == (2, 1, {})),
         "yolo-empty-label-file-is-background"),
    case(lambda c: yolo(c, [LINE], more=lambda r: (r / "a" / "labels" / "stray.txt").write_text(LINE)),
         Counted(problems("label file without an image"), 1, "1 label file(s) without an image, left out: stray.txt"),
         "yolo-label-file-without-image"),
    case(lambda c: (yolo(c, [LINE], "train: a/images\n"), train_cli(c, "--data", str(c.tmp / "yolo")))[1],
         ExitsTwo(("yolo/data.yaml has no 'names' list",)), "yolo-no-names"),
    case(lambda c: yolo(c, [LINE], more=lambda r: (r / "a" / "labels" / "x.txt").write_bytes(b"0 0.5 \xe9 0.5 0.5")),
         Counted(problems("unreadable label file"), 1, "1 unreadable label file"), "yolo-label-file-not-utf8"),
    case(lambda c: yolo(c, [LINE], "train: [a/images, a/images]\nnames: [cat, dog]\n"),
         Counted(problems("image listed twice"), 1, "1 image listed twice"), "yolo-same-folder-twice"),
    case(lambda c: yolo(c, [LINE], more=lambda r: (r / "a" / "images" / "zero.jpg").write_bytes(b"")),
         Counted(problems("unreadable image"), 1, "1 unreadable image"), "yolo-zero-byte-image"),
    # ------------------------------------------------------------------------------------------ image files
    case(zero_byte_in_dataset, Counted(lambda ds: len(ds.coco.imgs) - len(ds), 1,
                                       "1 of 2 images are not readable images and left out: b.jpg"),
         "image-zero-byte-in-dataset"),
    case(lambda c: ((c.tmp / "zero.jpg").write_bytes(b""), lambda: c.model.predict(c.tmp / "zero.jpg"))[1],
         Raises(ImageReadError, ("cannot read image", "zero.jpg: cannot identify image file")),
         "image-zero-byte-predict"),
    case(lambda c: (lambda path: lambda: c.model.predict(path))(truncated(c)),
         Raises(ImageReadError, ("truncated.jpg: image file is truncated",)), "image-truncated-jpeg-predict"),
    case(bomb_in_dataset, Counted(lambda ds: len(ds.coco.imgs) - len(ds), 1,
                                  "1 of 2 images are too large to decode (over Pillow's decompression-bomb limit, "
                                  "PIL.Image.MAX_IMAGE_PIXELS) and left out: b.jpg"),
         "image-decompression-bomb-in-dataset"),
    case(lambda c: predict_cli(c, image_folder(c, **{"bomb.png": "bomb"})),
         Counted(skipped_count, 1, "bomb.png: too large: Image size (400000000 pixels) exceeds limit",
                 lambda r: names_in(r) == ["a.jpg"]), "image-decompression-bomb-predict-cli"),
    case(lambda c: (bomb_png(c.tmp / "bomb.png"), lambda: c.model.predict(str(c.tmp / "bomb.png")))[1],
         Raises(ImageReadError, ("bomb.png: too large: Image size (400000000 pixels)", "MAX_IMAGE_PIXELS")),
         "image-decompression-bomb-predict-api"),
    case(lambda c: (Image.new("CMYK", (W, H), (0, 255, 255, 0)).save(c.tmp / "cmyk.jpg"),
                    lambda: to_tensor_image(c.tmp / "cmyk.jpg"))[1], Works(colour_is([1.0, 0.0, 0.0])),
         "image-cmyk-jpeg"),
    case(lambda c: (Image.fromarray(np.eye(H, W, dtype=bool)).save(c.tmp / "bits.png"),
                    lambda: to_tensor_image(c.tmp / "bits.png"))[1],
         Works(lambda t: torch.equal(t, torch.from_numpy(np.eye(H, W, dtype=np.float32)).expand(3, -1, -1))),
         "image-1-bit-png"),
    case(lambda c: (lambda path: lambda: to_tensor_image(path))(gif(c)), Works(colour_is([1.0, 0.0, 0.0], 0.02)),
         "image-animated-gif-first-frame"),
    case(lambda c: predict_cli(c, image_folder(c, **{CAFE: "jpeg", ZERO: "zero"})),
         Counted(skipped_count, 1, "z\\xe9ro.jpg: not an image", lambda r: names_in(r) == ["a.jpg", CAFE]),
         "image-non-utf8-file-names"),
    case(spaced_name, Works(lambda item: item[0].shape == (3, H, W)), "image-name-with-spaces"),
    case(lambda c: predict_cli(c, image_folder(c, **{"my__photo.jpg": "jpeg"})),
         Works(lambda r: names_in(r) == ["a.jpg", "my photo.jpg"]), "image-name-with-spaces-predict-cli"),
    case(lambda c: predict_cli(c, image_folder(c, **{"sub/b.jpg": "jpeg", "sub/back": ".."})),
         Counted(skipped_count, 1, "sub/back: symlink loop: a link to a folder already searched",
                 lambda r: names_in(r) == ["a.jpg", "b.jpg"]), "image-symlink-loop-folder"),
    case(lambda c: predict_cli(c, image_folder(c, **{"loop.jpg": "loop.jpg", "gone.jpg": "nowhere.jpg"})),
         Counted(skipped_count, 2, "loop.jpg: symlink loop: the link leads back to itself",
                 lambda r: "gone.jpg: broken link (to nowhere.jpg)" in r.out), "image-symlink-loop-and-broken-link"),
    case(lambda c: predict_cli(c, image_folder(c, **{"1.jpg": "jpeg", "001.jpg": "jpeg"})),
         Works(lambda r: sorted(im["id"] for im in json.loads((r.out_dir / "images.json").read_text())["images"])
               == [0, 1, 2]), "image-numeric-names-clash-renumbered"),
    # ------------------------------------------------------------------------------------------ model inputs
    case(lambda c: lambda: c.model.predict(torch.rand(3, 1, 1), threshold=0.0, top_k=5), Works(inside(1, 1)),
         "model-1x1-image"),
    case(lambda c: lambda: (resize_for_inference(torch.zeros(3, 50, 10000), c.model.resize).shape,
                            c.model.predict(torch.rand(3, 50, 10000), threshold=0.0, top_k=5)),
         Works(lambda r: r[0] == (3, 1, 32) and inside(10000, 50)(r[1])), "model-10000x50-image-resized"),
    case(*same_as(lambda: UINT8.long(), lambda: UINT8), "model-int64-tensor-as-0-255"),
    case(lambda c: lambda: c.model.predict(torch.full((3, 8, 8), 300)),
         Raises(ValueError, ("integer pixels must be 0..255, got 300..300 (torch.int64)",)), "model-int64-over-255"),
    case(*same_as(lambda: UINT8.double() / 255, lambda: UINT8.float() / 255), "model-float64-tensor"),
    case(lambda c: lambda: c.model.predict(UINT8.float()),
         Raises(ValueError, ("float pixels must be 0..1, got 0..255", "divide by 255")), "model-float-0-255"),
    case(lambda c: lambda: c.model.predict(torch.full((3, 8, 8), float("nan"))),
         Raises(ValueError, ("the image holds NaN or infinite values",)), "model-nan-tensor"),
    case(*same_as(lambda: UINT8[:1], lambda: UINT8[:1].expand(3, -1, -1)), "model-1-channel-tensor-as-gray"),
    case(*same_as(lambda: UINT8[0].numpy()[..., None], lambda: UINT8[0].numpy()), "model-hxwx1-array-as-gray"),
    case(lambda c: lambda: c.model.predict(torch.rand(4, H, W)),
         Raises(ValueError, ("got shape (4, 48, 64); for RGBA drop the alpha channel",)), "model-4-channel-tensor"),
    case(lambda c: lambda: c.model.predict(torch.rand(3, 0, W)),
         Raises(ValueError, ("the image has no pixels (shape (3, 0, 64))",)), "model-empty-image"),
    case(lambda c: lambda: c.model.predict([]), Works(lambda r: r == []), "model-empty-list"),
    case(lambda c: lambda: c.model.predict(UINT8, threshold=1.5),
         Raises(ValueError, ("threshold must be a score in 0..1, got 1.5",)), "model-threshold-1.5"),
    case(lambda c: lambda: c.model.predict(UINT8, threshold=-0.1),
         Raises(ValueError, ("threshold must be a score in 0..1, got -0.1",)), "model-threshold-negative"),
    case(lambda c: lambda: c.model.predict(UINT8, top_k=0),
         Raises(ValueError, ("top_k must be an integer of at least 1, got 0",)), "model-top-k-0"),
    case(lambda c: Cli(predict_main, predict_cli(c, image_folder(c)).argv + ["--threshold", "2"]),
         ExitsTwo(("threshold must be a score in 0..1, got 2.0",)), "predict-cli-threshold-2"),
]


@pytest.fixture(scope="module")
def model():
    detector = build_small_detector(num_classes=2, category_ids=[0, 5], class_names=["zero", "five"],
                                    resize=Resize(image_size=32))
    perturb_head_(detector)
    return detector.eval()


@pytest.fixture(scope="module")
def model_dir(model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus_model") / "model"
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("make, outcome", CASES)
def test_bad_input(make, outcome, tmp_path, request, capsys, caplog):
    action = make(Ctx(tmp_path, request))
    with caplog.at_level(logging.WARNING):
        outcome.check(action, capsys, caplog)
    printed = capsys.readouterr()
    assert "Traceback" not in printed.out + printed.err and "Logging error" not in printed.err


def test_the_corpus_is_large_and_every_case_has_an_outcome():
    assert len(CASES) >= 40 and len({p.id for p in CASES}) == len(CASES)
