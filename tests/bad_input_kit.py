"""Builders and outcomes of the bad-input corpus (test_bad_input_corpus.py): the files each case writes,
and the four kinds of exact outcome a case asserts."""
from __future__ import annotations

import json
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from dino_detector.config import DataConfig, build_config
from dino_detector.data.build import build_datasets, open_source
from dino_detector.data.coco import CocoDetection
from dino_detector.data.coco_form import DatasetError
from dino_detector.data.voc import read_voc
from dino_detector.data.yolo import read_yolo
from dino_detector.predict import main as predict_main
from dino_detector.spec import plan_run
from dino_detector.train import main as train_main

from test_bad_input import jpeg  # a seeded random 64 x 48 JPEG
from test_yolo_edges import labelled  # an 80 x 40 image and its YOLO label file

W, H = 64, 48
CATS = [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}]


# ---------------------------------------------------------------------------------------------- outcomes
@dataclass
class Cli:
    main: Callable
    argv: list


@dataclass
class Raises:
    error: type
    parts: tuple

    def check(self, action, capsys, caplog):
        with pytest.raises(self.error) as info:
            action()
        message = str(info.value)
        assert isinstance(info.value, ValueError) and "\n" not in message
        assert all(part in message for part in self.parts), message


@dataclass
class ExitsTwo:
    parts: tuple

    def check(self, action, capsys, caplog):
        assert action.main(action.argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
        assert all(part in err for part in self.parts), err


@dataclass
class Counted:
    count: Callable  # result -> the counter's value
    n: int
    log: str  # the summary line's words, with the count
    then: Callable = lambda result: True  # further checks of the result: True when it is right

    def check(self, action, capsys, caplog):
        result = run(action, capsys)
        assert self.count(result) == self.n
        text = caplog.text + (result.out if isinstance(result, CliResult) else "")
        assert self.log in text, text
        assert self.then(result) is True


@dataclass
class Works:
    then: Callable  # result -> True when it is exactly right (or an assertion inside fails)

    def check(self, action, capsys, caplog):
        assert self.then(run(action, capsys)) is True


@dataclass
class CliResult:
    code: int
    out: str
    out_dir: Path


def run(action, capsys):
    if not isinstance(action, Cli):
        return action()
    code = action.main(action.argv)
    out = capsys.readouterr().out
    assert code == 0, out
    return CliResult(code, out, Path(action.argv[action.argv.index("--output_dir") + 1]))


# ---------------------------------------------------------------------------------------------- builders
class Ctx:
    def __init__(self, tmp: Path, request):
        self.tmp, self._request = tmp, request

    @property
    def model(self):  # the shared detector, built only for the cases that use it
        return self._request.getfixturevalue("model")

    @property
    def model_dir(self) -> Path:
        return self._request.getfixturevalue("model_dir")


def coco(ctx: Ctx, anns=None, raw: str | None = None, drop=(), **parts) -> tuple[Path, Path]:
    """images/a.jpg, images/b.jpg and ann.json: two boxes, categories 1 and 2, with ``parts`` replacing keys,
    ``drop`` removing them, or ``raw`` as the whole file."""
    folder = ctx.tmp / "images"
    folder.mkdir(exist_ok=True)
    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": W, "height": H},
                       {"id": 2, "file_name": "b.jpg", "width": W, "height": H}],
            "annotations": anns if anns is not None else [box(1, 1, [4, 4, 20, 20]), box(2, 2, [8, 8, 10, 12], 2)],
            "categories": CATS, **parts}
    for i, im in enumerate(data["images"] if isinstance(data["images"], list) else []):
        if isinstance(im.get("file_name"), str) and not (folder / im["file_name"]).exists():
            jpeg(folder / im["file_name"], i)
    for key in drop:
        del data[key]
    ann = ctx.tmp / "ann.json"
    ann.write_text(raw if raw is not None else json.dumps(data))
    return folder, ann


def box(ann_id, image_id, bbox, category_id=1) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, "area": 1, "iscrowd": 0}


def dataset(ctx, **kwargs):
    folder, ann = coco(ctx, **kwargs)
    return lambda: CocoDetection(folder, ann, DataConfig(image_size=W), train=False)


def train_cli(ctx, *data_args) -> Cli:
    return Cli(train_main, ["--dino_model", "tiny", "--no_pretrained", "--device", "cpu", "--num_workers", "0",
                            *data_args, "--output_dir", str(ctx.tmp / "run")])


def coco_cli(ctx, **kwargs) -> Cli:
    folder, ann = coco(ctx, **kwargs)
    return train_cli(ctx, "--train_images", str(folder), "--train_annotations", str(ann))


def predict_cli(ctx, folder: Path, *extra) -> Cli:
    return Cli(predict_main, ["--checkpoint", str(ctx.model_dir), "--images", str(folder), "--device", "cpu",
                              "--num_workers", "0", "--threshold", "0.0", *extra,
                              "--output_dir", str(ctx.tmp / "out")])


def voc(ctx, objects: str, size: str = f"<size><width>{W}</width><height>{H}</height></size>", extra=()):
    """A LabelImg folder: a.jpg and a.xml (``objects`` and ``size`` as XML), plus ``extra`` (name, XML) files."""
    root = ctx.tmp / "voc"
    root.mkdir()
    jpeg(root / "a.jpg")
    (root / "a.xml").write_text(f"<annotation><filename>a.jpg</filename>{size}{objects}</annotation>")
    for name, text in extra:
        (root / name).write_text(text)
    return through_source(root, "voc", read_voc)


def obj(name="cat", coords=(2, 3, 12, 13)) -> str:
    tags = "".join(f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), coords))
    return f"<object><name>{name}</name><bndbox>{tags}</bndbox></object>"


def yolo(ctx, lines: list[str], yaml_text="train: a/images\nnames: [cat, dog]\n", more=None):
    """A YOLO folder: a/images/x.jpg with ``lines`` as its labels (80 x 40 pixels), then ``more(root)``."""
    root = ctx.tmp / "yolo"
    labelled(root, "a", "x", lines)
    (root / "data.yaml").write_text(yaml_text)
    if more is not None:
        more(root)
    return through_source(root, "yolo", read_yolo)


def through_source(root: Path, fmt: str, reader):
    """The reader's result (its counters), after open_source has read the folder and logged its summary."""
    def act():
        open_source(None, str(root), fmt, "train")
        return reader(root)
    return act


def problems(key):
    return lambda converted: converted.problems[key]


def boxes_are(expected):
    return lambda converted: [a["bbox"] for a in converted.coco["annotations"]] == expected


def close(got, want, atol=1e-6) -> bool:
    torch.testing.assert_close(got, want, atol=atol, rtol=0)
    return True


def bomb_png(path: Path) -> None:
    """A valid PNG header claiming 20000 x 20000 pixels (1 bit), over Pillow's decompression-bomb limit."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 20000, 20000, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) +
                     chunk(b"IEND", b""))


def image_folder(ctx, **files) -> Path:
    """A folder with a good a.jpg and ``files``: name -> 'zero' (0 bytes), 'bomb', 'jpeg' or a symlink target."""
    folder = ctx.tmp / "pictures"
    folder.mkdir(exist_ok=True)
    jpeg(folder / "a.jpg")
    for name, what in files.items():
        path = folder / name.replace("__", " ")
        path.parent.mkdir(parents=True, exist_ok=True)
        {"zero": lambda: path.write_bytes(b""), "bomb": lambda: bomb_png(path),
         "jpeg": lambda: jpeg(path, 3)}.get(what, lambda: os.symlink(what, path))()
    return folder


def skipped_count(result: CliResult) -> int:
    return int(re.search(r"(\d+) unreadable file\(s\) skipped", result.out)[1])


def predicted(result: CliResult) -> list[str]:
    return sorted(im["file_name"] for im in json.loads((result.out_dir / "images.json").read_text())["images"])


def truncated(ctx) -> Path:
    jpeg(ctx.tmp / "full.jpg")
    data = (ctx.tmp / "full.jpg").read_bytes()
    (ctx.tmp / "truncated.jpg").write_bytes(data[: len(data) // 2])
    return ctx.tmp / "truncated.jpg"


def same_as(make_input, reference):
    """(make, outcome): the detections of ``make_input`` equal those of ``reference`` (one image, two forms)."""
    def make(ctx):
        return lambda: [ctx.model.predict(build(), threshold=0.0, top_k=5) for build in (make_input, reference)]
    return make, Works(lambda pair: all(close(pair[0][k], pair[1][k], 1e-5) for k in ("boxes", "scores")))


def inside(width, height):
    """Five detections, boxes within the width x height image, labels the model's category ids."""
    def check(pred) -> bool:
        b = pred["boxes"]
        return (b.shape == (5, 4) and bool((b >= 0).all()) and bool((b[:, 0::2] <= width).all())
                and bool((b[:, 1::2] <= height).all()) and set(pred["labels"].tolist()) <= {0, 5})
    return check


def category_zero(ctx):
    """Category id 0 is a legal id: labels 0 and 1 map back to ids 0 and 5 in the spec, the model and predictions."""
    folder, ann = coco(ctx, categories=[{"id": 0, "name": "zero", "supercategory": "none"},
                                        {"id": 5, "name": "five", "supercategory": "none"}],
                       anns=[box(1, 1, [4, 4, 20, 20], 0), box(2, 2, [8, 8, 10, 12], 5)])

    def act():
        plan = plan_run(build_config(dino_model="tiny", pretrained=False, device="cpu", debug=True, image_size=W,
                                     train_images=str(folder), train_annotations=str(ann)))
        train, _ = build_datasets(plan.spec, plan.sources)
        return plan.spec, train, ctx.model.predict(train.image_path(0), threshold=0.0, top_k=20)

    return act


def category_zero_kept(result) -> bool:
    spec, train, pred = result
    names = dict(zip(pred["labels"].tolist(), pred["label_names"]))
    return (spec.model.category_ids == train.category_ids == [0, 5] and spec.model.class_names == ["zero", "five"]
            and train.targets[1][1].tolist() == [0] and train.targets[2][1].tolist() == [1]  # contiguous labels
            and names == {0: "zero", 5: "five"})  # 10 queries x 2 classes, top 20: every pair, both ids


def gif(ctx) -> Path:
    frames = [Image.new("RGB", (W, H), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(ctx.tmp / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return ctx.tmp / "anim.gif"


def colour_is(rgb, atol=0.05):
    return lambda t: t.shape == (3, H, W) and close(t.mean((1, 2)), torch.tensor(rgb), atol)


def image_is(converted, size) -> bool:
    return (converted.coco["images"][0]["width"], converted.coco["images"][0]["height"]) == size


def spaced_name(ctx):
    folder, ann = coco(ctx, images=[{"id": 1, "file_name": "my photo 1.jpg", "width": W, "height": H}], anns=ONE)
    return lambda: CocoDetection(folder, ann, DataConfig(image_size=W), train=False)[0]


def zero_byte_in_dataset(ctx):
    (ctx.tmp / "images").mkdir()
    (ctx.tmp / "images" / "b.jpg").write_bytes(b"")
    return dataset(ctx)


def bomb_in_dataset(ctx):
    (ctx.tmp / "images").mkdir()
    bomb_png(ctx.tmp / "images" / "b.jpg")
    return dataset(ctx)


def names_in(result: CliResult) -> list[str]:
    return [Path(n).name for n in predicted(result)]


def case(make, outcome, id):
    """``make(ctx)`` writes the input files and returns the action: a callable, or a ``Cli`` command line."""
    return pytest.param(make, outcome, id=id)


A = {"id": 1, "file_name": "a.jpg", "width": W, "height": H}
ONE = [box(1, 1, [4, 4, 20, 20])]
UINT8 = torch.from_numpy(np.random.default_rng(5).integers(0, 256, (3, H, W), dtype=np.uint8))
LINE = "0 0.5 0.5 0.25 0.5"
E = DatasetError
CAFE, ZERO = os.fsdecode(b"caf\xe9.jpg"), os.fsdecode(b"z\xe9ro.jpg")  # file names that are not UTF-8


def yolo_bad_line(line: str):
    return lambda c: yolo(c, [LINE, line])


