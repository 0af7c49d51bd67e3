"""Property tests (hypothesis) of the geometry that every image and box goes through.

1. Training augmentation (every ``DetectionTransform`` option, and the plain resize) keeps every box inside the
   image; the dataset's targets (cx, cy, w, h relative to the image) lie in 0..1 with w, h > 0, and boxes and
   labels are dropped together.
2. A horizontal flip applied twice is the identity, on the boxes and on the image.
3. COCO -> YOLO -> COCO and COCO -> VOC -> COCO keep every box to 1e-3 px.
4. Batched Hungarian matching equals matching each image alone (up to assignments tied within float rounding).
5. Post-processing never returns a box outside the original image.

Every property runs ``max_examples`` (200) examples drawn with ``derandomize=True``: the examples are a function
of the test alone, so every run (CI, a laptop) checks the same ones. Random sources inside the code under test
(torch's generator: augmentation draws) are seeded from a drawn integer in every example. The hypothesis
example database is off, so a failure found once is not replayed in later runs: runs stay identical; a failure
prints the example (and ``print_blob`` a ``@reproduce_failure`` line).

No health check is suppressed: the generated data is small, and the tests take no function-scoped fixtures
(tmp_path is not reset between examples; folders come from ``tempfile.TemporaryDirectory`` in the example).
"""
from __future__ import annotations

import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import yaml
from hypothesis import event, given, settings, target
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from scipy.optimize import linear_sum_assignment
from torchvision import tv_tensors

from dino_detector.config import DataConfig
from dino_detector.data.coco import CocoDetection
from dino_detector.data.formats import read_voc, read_yolo
from dino_detector.data.images import load_image, to_tensor_image
from dino_detector.data.transforms import DetectionTransform
from dino_detector.losses import matcher as matcher_module
from dino_detector.losses.matcher import HungarianMatcher
from dino_detector.models.postprocess import postprocess, topk_detections

PROPERTY = settings(max_examples=200, deadline=None, derandomize=True, database=None, print_blob=True)

EPS = 1e-5  # float32 slack on normalised coordinates (a division by the image side, ~1e-7 relative)

seeds = st.integers(0, 2**31 - 1)


# -- 1. augmentation keeps boxes inside the image -------------------------------------------------------------

@st.composite
def data_configs(draw) -> tuple[DataConfig, bool]:
    """A ``DataConfig`` with any mix of the augmentation options (small sizes: fast), and train or not."""
    sizes = draw(st.one_of(
        st.builds(lambda s: dict(image_size=s), st.integers(4, 64)),  # longer side = image_size
        st.integers(4, 40).flatmap(lambda m: st.builds(  # DETR recipe: shorter = min_size, longer <= max_size
            lambda mx: dict(image_size=0, min_size=m, max_size=mx), st.integers(m, 80)))))
    cfg = DataConfig(
        **sizes,
        flip=draw(st.booleans()),
        hflip_prob=draw(st.sampled_from([0.0, 0.5, 1.0])),
        color_jitter=draw(st.sampled_from([0.0, 0.2, 0.5])),
        multi_scale=draw(st.booleans()),
        crop_prob=draw(st.sampled_from([0.0, 0.5, 1.0])),
        crop_min_fraction=draw(st.floats(0.05, 1.0)),
        rotation_degrees=draw(st.one_of(st.just(0.0), st.floats(0.0, 45.0))),
    )
    return cfg, draw(st.booleans())


@st.composite
def images_with_boxes(draw, max_boxes: int = 6, inside: bool = True):
    """(image [3, H, W] in 0..1, boxes [N, 4] xyxy pixels with x1 > x0, y1 > y0). ``inside``: boxes within the
    image (what the dataset hands the transform, after clipping); else they may stick out of it."""
    h, w = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    image = torch.from_numpy(draw(hnp.arrays(np.float32, (3, h, w), elements=st.floats(0, 1, width=32))))
    rows = []
    for _ in range(draw(st.integers(0, max_boxes))):
        box = []
        for side in (w, h):
            lo, hi = (0.0, float(side)) if inside else (-0.5 * side, 1.5 * side)
            a = draw(st.floats(lo, hi - 1e-3))
            box.append((a, min(hi, a + draw(st.floats(1e-3, max(1e-3, hi - a))))))  # sides >= 1e-3 px
        (x0, x1), (y0, y1) = box
        rows.append([x0, y0, x1, y1])
    return image, torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


@PROPERTY
@given(data_configs(), images_with_boxes(), seeds)
def test_transform_keeps_every_box_inside_the_transformed_image(config, sample, seed):
    """``DetectionTransform`` (any options, train or the plain evaluation resize) returns an image [3, h, w] in
    0..1 and one box per input box, each xyxy inside [0, w] x [0, h] with x0 <= x1, y0 <= y1 (zero-area slivers
    are the dataset's to drop: next property)."""
    cfg, train = config
    image, boxes = sample
    torch.manual_seed(seed)
    out, bxs = DetectionTransform(cfg, train)(image, boxes)
    assert out.ndim == 3 and out.shape[0] == 3 and min(out.shape[-2:]) >= 1
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    h, w = out.shape[-2:]
    assert bxs.shape == boxes.shape and type(bxs) is torch.Tensor and torch.isfinite(bxs).all()
    assert (bxs >= 0).all() and (bxs[:, 0::2] <= w).all() and (bxs[:, 1::2] <= h).all()
    assert (bxs[:, 2] >= bxs[:, 0]).all() and (bxs[:, 3] >= bxs[:, 1]).all()


@PROPERTY
@given(data_configs(), images_with_boxes(inside=False), seeds, st.sampled_from([1, 3, 7]))
def test_dataset_targets_lie_inside_the_image_and_keep_labels_with_boxes(config, sample, seed, id_step):
    """Through ``CocoDetection`` (clipping of the annotation, transform, dropping of slivers), every target box
    (cx, cy, w, h relative to the transformed image) has w, h > 0 and lies in [0, 1]; boxes and labels keep the
    same length, and a box is dropped exactly when the transform left it without area, with its own label.

    Every annotation gets a category of its own (ids ``id_step`` apart, so sparse), so the labels say which
    annotation each target box came from."""
    cfg, train = config
    image, boxes = sample
    h, w = image.shape[-2:]
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": w, "height": h}],
            "categories": [{"id": 1 + id_step * i, "name": f"c{i}"} for i in range(max(len(boxes), 1))],
            "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1 + id_step * i, "iscrowd": 0,
                             "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)}
                            for i, (x0, y0, x1, y1) in enumerate(boxes.tolist())]}
    with tempfile.TemporaryDirectory() as folder:
        pixels = (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(Path(folder) / "a.png")
        ds = CocoDetection(folder, coco, cfg, train=train, name="property")
        torch.manual_seed(seed)
        out, item = ds[0]
        loaded = to_tensor_image(load_image(ds.image_path(0)))

    # the annotations clipped to the image; those left without area dropped, with their labels
    clipped, clipped_labels = ds.targets[1]
    x0, y0 = boxes[:, 0].clamp(min=0), boxes[:, 1].clamp(min=0)
    x1, y1 = boxes[:, 2].clamp(max=w), boxes[:, 3].clamp(max=h)
    has_area = (x1 > x0) & (y1 > y0)
    assert clipped_labels.tolist() == torch.nonzero(has_area).flatten().tolist()
    torch.testing.assert_close(clipped, torch.stack([x0, y0, x1, y1], -1)[has_area])
    got, labels = item["boxes"], item["labels"]
    assert got.ndim == 2 and got.shape[1] == 4 and labels.shape == (len(got),)
    assert torch.isfinite(got).all()
    cx, cy, bw, bh = got.unbind(-1)
    assert (bw > 0).all() and (bh > 0).all()
    assert (cx - bw / 2 >= -EPS).all() and (cx + bw / 2 <= 1 + EPS).all()
    assert (cy - bh / 2 >= -EPS).all() and (cy + bh / 2 <= 1 + EPS).all()
    assert ((got >= 0) & (got <= 1)).all()
    # the same draws on the same input: the transform's own boxes, and which of them have area
    torch.manual_seed(seed)
    again, xyxy = ds.transform(loaded, clipped)
    assert again.shape == out.shape
    keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    event(f"annotations clipped away: {int((~has_area).sum() > 0)}, boxes dropped after the transform: "
          f"{int((~keep).sum() > 0)}")  # --hypothesis-show-statistics: both paths are exercised
    target(float((~keep).sum()), label="boxes the transform left without area")  # seek the dropping path
    assert labels.tolist() == clipped_labels[keep].tolist()
    sh, sw = out.shape[-2:]
    kept = xyxy[keep]
    expected = torch.stack([(kept[:, 0] + kept[:, 2]) / 2 / sw, (kept[:, 1] + kept[:, 3]) / 2 / sh,
                            (kept[:, 2] - kept[:, 0]) / sw, (kept[:, 3] - kept[:, 1]) / sh], -1)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


# -- 2. flipping twice ----------------------------------------------------------------------------------------

@PROPERTY
@given(images_with_boxes())
def test_horizontal_flip_twice_is_the_identity(sample):
    """The training flip (``hflip_prob`` 1, nothing else on) maps x to W - x, so applied twice it gives back the
    boxes (to float rounding) and the image (exactly); once, it mirrors each box: (W - x1, y0, W - x0, y1)."""
    image, boxes = sample
    h, w = image.shape[-2:]
    cfg = DataConfig(hflip_prob=1.0, color_jitter=0.0, image_size=max(h, w))
    flip = DetectionTransform(cfg, train=True).light  # flip and colour: the light part
    bxs = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w))
    once_image, once = flip(image, bxs)
    mirrored = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], -1)
    torch.testing.assert_close(once.as_subclass(torch.Tensor), mirrored, atol=1e-5, rtol=0)
    assert torch.equal(once_image, image.flip(-1))
    twice_image, twice = flip(once_image, once)
    assert torch.equal(twice_image, image)
    torch.testing.assert_close(twice.as_subclass(torch.Tensor), boxes, atol=1e-5, rtol=0)
    # and through the whole transform (a resize to the same size, the flip, the final clamp)
    transform = DetectionTransform(cfg, train=True)
    out, once_t = transform(image, boxes)
    back, twice_t = transform(out, once_t)
    assert back.shape == image.shape
    torch.testing.assert_close(back, image, atol=1e-5, rtol=0)
    torch.testing.assert_close(twice_t, boxes, atol=1e-4, rtol=0)


# -- 3. format round trips ------------------------------------------------------------------------------------

LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# category names: a letter, then letters, digits, '_', '-' and inner spaces (both readers strip outer ones)
NAMES = st.builds(lambda first, rest: (first + rest).strip(), st.sampled_from(LETTERS),
                  st.text(alphabet=LETTERS + "0123456789_- ", max_size=7))


def interval(side: int):
    """(a, b) with 0 <= a < b <= side and b - a >= 0.01: integers (as most VOC files write) or any floats."""
    integers = st.integers(0, side - 1).flatmap(lambda a: st.tuples(st.just(a), st.integers(a + 1, side)))
    floats = st.floats(0, side - 0.01).flatmap(
        lambda a: st.tuples(st.just(a), st.floats(0.01, max(0.01, side - a)).map(lambda d: min(float(side), a + d))))
    return st.one_of(integers.map(lambda ab: tuple(map(float, ab))), floats)


@st.composite
def coco_datasets(draw) -> dict:
    """A COCO dict: 1-3 images (1..64 px sides), 1-4 categories with sparse ids and distinct names, 0-4 boxes per
    image inside the image with sides >= 0.01 px."""
    names = draw(st.lists(NAMES, min_size=1, max_size=4, unique=True))
    ids = draw(st.lists(st.integers(0, 1000), min_size=len(names), max_size=len(names), unique=True))
    coco = {"images": [], "annotations": [],
            "categories": [{"id": i, "name": n, "supercategory": "none"} for i, n in zip(ids, names)]}
    for index in range(draw(st.integers(1, 3))):
        w, h = draw(st.integers(1, 64)), draw(st.integers(1, 64))
        coco["images"].append({"id": index + 1, "file_name": f"im{index}.png", "width": w, "height": h})
        for _ in range(draw(st.integers(0, 4))):
            (x0, x1), (y0, y1) = draw(interval(w)), draw(interval(h))
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": index + 1,
                                        "category_id": draw(st.sampled_from(ids)), "iscrowd": 0,
                                        "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)})
    return coco


def boxes_by_file(coco: dict) -> dict[str, tuple[int, int, list[tuple]]]:
    """file name -> (width, height, [(category name, x, y, w, h)] in annotation order)."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    out = {im["file_name"]: (im["width"], im["height"], []) for im in coco["images"]}
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    for a in coco["annotations"]:
        out[files[a["image_id"]]][2].append((names[a["category_id"]], *a["bbox"]))
    return out


def assert_same_boxes(got: dict, expected: dict, tol: float = 1e-3) -> None:
    """The same images (name, size) with the same boxes in the same order (both readers keep the order of
    the lines / objects of a file), each coordinate within ``tol`` pixels."""
    assert {f: v[:2] for f, v in got.items()} == {f: v[:2] for f, v in expected.items()}
    for file_name, (_, _, boxes) in expected.items():
        read = got[file_name][2]
        assert [b[0] for b in read] == [b[0] for b in boxes], file_name
        for (_, *a), (_, *b) in zip(read, boxes):
            assert max(abs(u - v) for u, v in zip(a, b)) <= tol, (file_name, a, b)


def write_images(coco: dict, folder: Path) -> None:
    """Real (tiny) image files of the listed sizes: the readers take sizes from the image headers."""
    folder.mkdir(parents=True, exist_ok=True)
    for im in coco["images"]:
        Image.new("RGB", (im["width"], im["height"]), (40, 80, 120)).save(folder / im["file_name"])


@PROPERTY
@given(coco_datasets())
def test_coco_to_yolo_and_back_keeps_every_box(coco):
    """Writing a COCO dataset as YOLO (``images/train``, ``labels/train`` with ``class cx cy w h`` normalised,
    written at repr() precision, and a data.yaml naming the classes) and reading it with ``read_yolo`` gives the
    same images and, per image, the same boxes with the same category names, to 1e-3 px. The only problem the
    reader may count is a box clipped to the image: (cx - w / 2) * W can round a hair below 0 or above W."""
    cats = {c["id"]: i for i, c in enumerate(coco["categories"])}  # YOLO class = position in ``names``
    sizes = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_images(coco, root / "images" / "train")
        (root / "labels" / "train").mkdir(parents=True)
        for im in coco["images"]:
            lines = []
            for a in coco["annotations"]:
                if a["image_id"] == im["id"]:
                    w, h = sizes[a["image_id"]]
                    x, y, bw, bh = a["bbox"]
                    cx, cy, nw, nh = (x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h
                    lines.append(f"{cats[a['category_id']]} {cx!r} {cy!r} {nw!r} {nh!r}")
            (root / "labels" / "train" / f"{Path(im['file_name']).stem}.txt").write_text("\n".join(lines) + "\n")
        (root / "data.yaml").write_text(yaml.safe_dump(
            {"path": ".", "train": "images/train", "names": [c["name"] for c in coco["categories"]]}))
        converted = read_yolo(root / "data.yaml", "train")
    assert [c["name"] for c in converted.coco["categories"]] == [c["name"] for c in coco["categories"]]
    assert set(converted.problems) <= {"box clipped to the image"}
    assert_same_boxes(boxes_by_file(converted.coco), boxes_by_file(coco))


@PROPERTY
@given(coco_datasets())
def test_coco_to_voc_and_back_keeps_every_box(coco):
    """Writing a COCO dataset as VOC (``Annotations/*.xml`` with ``<size>`` and ``<bndbox>`` xmin = x,
    xmax = x + w, at repr() precision, integers as such; ``JPEGImages/``) and reading it with ``read_voc`` gives
    the same images and boxes with the same category names, to 1e-3 px.

    Conventions: ``read_voc`` takes the coordinates as written (floats accepted), with no "1-based pixel"
    shift and no rounding: COCO's (x, y, w, h) is (xmin, ymin, xmax - xmin, ymax - ymin), so the round trip is
    exact up to the float subtraction. VOC's categories are the names found in the files, sorted, ids 1..C:
    compared by name (a category no box uses does not come back)."""
    names = {c["id"]: c["name"] for c in coco["categories"]}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_images(coco, root / "JPEGImages")
        (root / "Annotations").mkdir()
        for im in coco["images"]:
            node = ET.Element("annotation")
            ET.SubElement(node, "filename").text = im["file_name"]
            size = ET.SubElement(node, "size")
            for key, value in (("width", im["width"]), ("height", im["height"]), ("depth", 3)):
                ET.SubElement(size, key).text = str(value)
            for a in coco["annotations"]:
                if a["image_id"] != im["id"]:
                    continue
                obj = ET.SubElement(node, "object")
                ET.SubElement(obj, "name").text = names[a["category_id"]]
                ET.SubElement(obj, "difficult").text = "0"
                box = ET.SubElement(obj, "bndbox")
                x, y, w, h = a["bbox"]
                for key, value in (("xmin", x), ("ymin", y), ("xmax", x + w), ("ymax", y + h)):
                    ET.SubElement(box, key).text = str(int(value)) if value.is_integer() else repr(value)
            ET.ElementTree(node).write(root / "Annotations" / f"{Path(im['file_name']).stem}.xml")
        converted = read_voc(root)
    used = sorted({names[a["category_id"]] for a in coco["annotations"]})
    assert [c["name"] for c in converted.coco["categories"]] == used
    assert set(converted.problems) <= {"box clipped to the image"}
    assert_same_boxes(boxes_by_file(converted.coco), boxes_by_file(coco))


# -- 4. batched matching --------------------------------------------------------------------------------------

@st.composite
def unit_boxes(draw, n: int, min_side: float) -> torch.Tensor:
    """n (cx, cy, w, h) boxes: centres in [0, 1], sides in [min_side, 1] (they may leave the unit square)."""
    centres = draw(hnp.arrays(np.float32, (n, 2), elements=st.floats(0, 1, width=32)))
    sides = draw(hnp.arrays(np.float32, (n, 2), elements=st.floats(min_side, 1, width=32)))
    return torch.from_numpy(np.concatenate([centres, sides], -1))


@st.composite
def matching_problems(draw):
    b, q, c = draw(st.integers(1, 4)), draw(st.integers(1, 10)), draw(st.integers(1, 5))
    softmax = draw(st.booleans())
    logits = torch.from_numpy(draw(hnp.arrays(np.float32, (b, q, c + int(softmax)),
                                              elements=st.floats(-20, 20, width=32))))
    # predicted sides may be 0 (a saturated sigmoid); targets have area, as the dataset drops boxes without
    outputs = {"pred_logits": logits, "pred_boxes": draw(unit_boxes(b * q, 0.0)).reshape(b, q, 4)}
    targets = []
    for n in draw(st.lists(st.integers(0, 8), min_size=b, max_size=b)):
        labels = draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n))
        targets.append({"labels": torch.tensor(labels, dtype=torch.int64), "boxes": draw(unit_boxes(n, 2**-20))})
    return outputs, targets, softmax, draw(st.sampled_from([1, 1, 2, 3]))


def assignment_cost(cost: np.ndarray, rows: torch.Tensor, cols: torch.Tensor) -> float:
    """The total cost of (query, target) pairs in an image's [Q, N] cost matrix (float64 sum)."""
    return float(cost[rows.numpy(), cols.numpy()].astype(np.float64).sum())


@PROPERTY
@given(matching_problems())
def test_batched_matching_equals_matching_each_image_alone(problem):
    """``HungarianMatcher`` on a batch (1-4 images, 1-10 queries, 0-8 targets each, empty ones included; sigmoid
    and softmax class costs; one-to-one and one-to-many ``repeats``) matches every image as it is matched alone:
    the image's cost matrix is the same (to float rounding) and the indices are the same; they may differ only
    where another assignment ties with the optimum to within that rounding, and then both cost the same.

    Why not bit-equal always: this property found that the batched and single-image cost matrices can differ in
    the last bit (torch evaluates pow / log with vectorised or scalar code depending on where an element falls
    in the tensor, and the batch puts it elsewhere); with near-duplicate targets (duplicate annotations) or
    identical queries the optimum is then a near-tie and either assignment is correct. Not a source bug.

    Supported domain: any number of targets, also more than queries (then min(Q, repeats * N) pairs). Target
    boxes must have w, h > 0 (the GIoU of two zero-area boxes is NaN, which the assignment refuses; the dataset
    drops such targets); predicted sides may be 0.

    Each image's answer is also a valid matching: int64, min(Q, repeats * N) pairs, no query twice, every target
    index in range and used at most ``repeats`` times (exactly that often when there are enough queries)."""
    outputs, targets, softmax, repeats = problem
    matcher = HungarianMatcher(softmax=softmax)
    sizes = [len(t["labels"]) for t in targets]
    # the cost matrices the matcher hands scipy, recorded (no call at all when the batch has no target)
    with mock.patch.object(matcher_module, "linear_sum_assignment", wraps=linear_sum_assignment) as solve:
        batched = matcher(outputs, targets, repeats)
    batch_costs = [c.args[0][:, :n] for c, n in zip(solve.call_args_list, sizes)]  # [Q, N]: one repeat
    assert len(batched) == len(targets) and len(batch_costs) == (len(targets) if sum(sizes) else 0)
    for i, (rows, cols) in enumerate(batched):
        with mock.patch.object(matcher_module, "linear_sum_assignment", wraps=linear_sum_assignment) as solve:
            alone = matcher({k: v[i:i + 1] for k, v in outputs.items()}, [targets[i]], repeats)
        assert len(alone) == 1
        n, q = sizes[i], outputs["pred_logits"].shape[1]
        assert rows.dtype == cols.dtype == torch.int64
        assert len(rows) == len(cols) == min(q, repeats * n)
        assert len(set(rows.tolist())) == len(rows) and all(0 <= r < q for r in rows.tolist())
        uses = np.bincount(cols.numpy(), minlength=n)
        assert len(uses) == n and uses.max(initial=0) <= repeats
        if q >= repeats * n:
            assert (uses == repeats).all()
        if n == 0:
            assert rows.numel() == 0 and alone[0][0].numel() == alone[0][1].numel() == 0
            continue
        cost = solve.call_args.args[0][:, :n]
        slack = np.abs(batch_costs[i] - cost).max()
        assert np.isfinite(cost).all() and slack <= 1e-5 * (1 + np.abs(cost).max())
        if not (torch.equal(rows, alone[0][0]) and torch.equal(cols, alone[0][1])):
            event("batched and alone answers differ: a tie within float rounding")
            # both optimal for matrices ``slack`` apart: their totals differ by at most 2 * pairs * slack
            gap = assignment_cost(cost, rows, cols) - assignment_cost(cost, *alone[0])
            assert abs(gap) <= 2 * len(rows) * slack + 1e-6


# -- 5. post-processing ---------------------------------------------------------------------------------------

@st.composite
def raw_outputs(draw):
    """Raw head outputs (logits up to +-30, boxes anywhere in [-3, 3]: out of range, even negative sides),
    original sizes, a head kind, top_k, threshold, optionally sparse category ids, and a soft-NMS sigma."""
    b, q, c = draw(st.integers(1, 3)), draw(st.integers(1, 10)), draw(st.integers(1, 5))
    softmax = draw(st.booleans())
    logits = draw(hnp.arrays(np.float32, (b, q, c + int(softmax)), elements=st.floats(-30, 30, width=32)))
    boxes = draw(hnp.arrays(np.float32, (b, q, 4), elements=st.floats(-3, 3, width=32)))
    sizes = draw(st.lists(st.tuples(st.integers(1, 2000), st.integers(1, 2000)), min_size=b, max_size=b))
    ids = draw(st.none() | st.lists(st.integers(0, 10_000), min_size=c, max_size=c, unique=True))
    return ({"pred_logits": torch.from_numpy(logits), "pred_boxes": torch.from_numpy(boxes)}, sizes, softmax,
            draw(st.integers(1, 60)), draw(st.sampled_from([0.0, 0.0, 0.05, 0.3, 0.5, 0.9])), ids,
            draw(st.sampled_from([0.0, 0.5, 0.01])))


@PROPERTY
@given(raw_outputs())
def test_postprocess_never_returns_a_box_outside_the_original_image(raw):
    """``postprocess`` (sigmoid and softmax heads, any top_k / threshold, soft NMS or not) returns per image at most
    min(top_k, Q * C) detections, each xyxy box inside [0, width] x [0, height] of its original size, whatever
    the predicted boxes (also out of range); scores above the threshold, best first; labels in 0..C-1 and
    category ids looked up from them. Predicted boxes with w, h >= 0 come out with x0 <= x1, y0 <= y1. The
    fixed-size ``topk_detections`` (the exported graph, int64 sizes) keeps its boxes inside the image too."""
    outputs, sizes, softmax, top_k, threshold, ids, sigma = raw
    b, q, c = outputs["pred_boxes"].shape[0], outputs["pred_boxes"].shape[1], outputs["pred_logits"].shape[-1]
    c -= int(softmax)
    results = postprocess(outputs, sizes, ids, top_k=top_k, threshold=threshold, softmax=softmax,
                          soft_nms_sigma=sigma)
    assert len(results) == b
    fixed, _, _ = topk_detections(outputs, torch.tensor(sizes, dtype=torch.int64), top_k, softmax, sigma)
    assert fixed.shape == (b, min(top_k, q * c), 4)
    for (h, w), det, boxes_k in zip(sizes, results, fixed):
        for boxes in (det["boxes"], boxes_k):
            assert torch.isfinite(boxes).all()
            assert (boxes >= 0).all() and (boxes[:, 0::2] <= w).all() and (boxes[:, 1::2] <= h).all()
        n = len(det["scores"])
        assert n <= min(top_k, q * c)
        assert det["boxes"].shape == (n, 4) and det["labels"].shape == det["category_ids"].shape == (n,)
        assert (det["scores"] > threshold).all() and (det["scores"].diff() <= 0).all()
        assert ((det["labels"] >= 0) & (det["labels"] < c)).all()
        lookup = ids if ids is not None else list(range(c))
        assert det["category_ids"].tolist() == [lookup[i] for i in det["labels"].tolist()]
    sides_ok = (outputs["pred_boxes"][..., 2:] >= 0).all(-1)  # [B, Q]
    for i, (det, boxes_k) in enumerate(zip(results, fixed)):
        if sides_ok[i].all():
            for boxes in (det["boxes"], boxes_k):
                assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
