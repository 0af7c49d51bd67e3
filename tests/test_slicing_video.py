"""Sliced inference finds a small object in a 4000 x 3000 image that whole-image inference misses (tiles
batched, offsets back to the image, one box per object after merging); ``predict --video`` writes a playable
annotated video (re-opened, frames counted) and one JSON line per frame."""
from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch
from scipy import ndimage

from dino_detector.data.transforms import Resize
from dino_detector.deploy.backends import Backend
from dino_detector.deploy.detector import DeployedDetector
from dino_detector.deploy.slicing import SliceSettings, sliced_detect

MIN_SIDE = 3  # pixels: the stand-in detector's smallest object, in the image it is given


class RedBlobs(Backend):
    """A detector with a known blind spot: pure-red blobs of at least MIN_SIDE x MIN_SIDE pixels in the
    (resized) image it is given, mapped back to original pixels. Resized whole, a 24-px dot of a 4000-px
    image shrinks to ~2 px and is blended away; inside a 640-px tile it stays ~15 px."""

    name = "red-blobs"

    def __init__(self, image_size: int = 400):
        super().__init__(resize=Resize(image_size=image_size), category_ids=[7], class_names=["dot"], weights="raw")
        self.calls: list[int] = []

    def detect(self, images, orig_sizes, *, threshold=0.5, top_k=100):
        self.calls.append(len(images))
        out = []
        for image, (h, w) in zip(images, orig_sizes):
            red = ((image[0] > 0.8) & (image[1] < 0.2) & (image[2] < 0.2)).numpy()
            sy, sx = h / image.shape[1], w / image.shape[2]
            boxes = [[xs.start * sx, ys.start * sy, xs.stop * sx, ys.stop * sy]
                     for ys, xs in ndimage.find_objects(ndimage.label(red)[0])
                     if ys.stop - ys.start >= MIN_SIDE and xs.stop - xs.start >= MIN_SIDE]
            n = len(boxes)
            out.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(n, 4),
                        "scores": torch.full((n,), 0.9), "category_ids": torch.full((n,), 7, dtype=torch.int64)})
        return out


@pytest.fixture(scope="module")
def large_image() -> torch.Tensor:
    """4000 x 3000 grey picture with one 24 x 24 red dot at x 2500..2524, y 1700..1724 (a tile border
    region: 2500 is inside two overlapping 640-px tiles)."""
    image = torch.full((3, 3000, 4000), 0.5)
    image[:, 1700:1724, 2500:2524] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
    return image


def test_small_object_found_with_slicing_and_missed_without(large_image):
    backend = RedBlobs()
    whole = DeployedDetector(backend).predict(large_image)
    assert len(whole["scores"]) == 0  # too small once the image is resized to 400 px
    settings = SliceSettings(640, overlap=0.2, batch_size=8)
    found = sliced_detect(backend, large_image, settings)
    assert len(found["scores"]) == 1  # seen by several overlapping tiles, merged into one box
    assert found["category_ids"].tolist() == [7]
    torch.testing.assert_close(found["boxes"][0], torch.tensor([2500.0, 1700.0, 2524.0, 1724.0]), atol=3.0, rtol=0)
    # the whole image alone, then 8 x 6 tiles of 640 px with a 128-px overlap (the last column and row
    # shifted inwards) in batches of 8, then the whole image again for the merge
    assert backend.calls == [1] + [8] * 6 + [1]


def test_python_api_slices_and_merges(large_image):
    pred = DeployedDetector(RedBlobs()).predict(large_image, slice_size=512, slice_overlap=0.25, slice_merge="nmm")
    assert pred["label_names"] == ["dot"] and len(pred["boxes"]) == 1
    with pytest.raises(ValueError, match="slice size"):
        DeployedDetector(RedBlobs()).predict(large_image, slice_size=8)
    with pytest.raises(ValueError, match="overlap"):
        SliceSettings(640, overlap=1.0)


class TileShifted(RedBlobs):
    """RedBlobs that scores its whole-image boxes 0.6 and its tile boxes 0.9, shifted 6 px to the right: the
    overconfident, slightly wrong second look of a tile at an object the whole image already shows."""

    def __init__(self, whole_hw):
        super().__init__()
        self.whole_hw = tuple(whole_hw)

    def detect(self, images, orig_sizes, *, threshold=0.5, top_k=100):
        out = super().detect(images, orig_sizes, threshold=threshold, top_k=top_k)
        for det, size in zip(out, orig_sizes):
            if tuple(size) == self.whole_hw:
                det["scores"] = torch.full_like(det["scores"], 0.6)
            else:
                det["boxes"] = det["boxes"] + torch.tensor([6.0, 0.0, 6.0, 0.0])
        return out


def test_objects_the_whole_image_shows_are_taken_from_it(large_image):
    """prefer_whole: the 300-px square keeps the whole image's box and score, the dot only the
    tiles see is added; merged alike, NMS keeps the tile's higher-scored, shifted box instead."""
    image = large_image.clone()
    image[:, 600:900, 600:900] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
    preferred = sliced_detect(TileShifted(image.shape[-2:]), image, SliceSettings(640, overlap=0.2, prefer_whole=True))
    merged = sliced_detect(TileShifted(image.shape[-2:]), image, SliceSettings(640, overlap=0.2))  # the default
    for found in (preferred, merged):
        assert len(found["scores"]) == 2  # the square once, the dot once
    square = [i for i, b in enumerate(preferred["boxes"]) if b[2] - b[0] > 200]
    assert len(square) == 1 and preferred["scores"][square[0]] == pytest.approx(0.6)
    torch.testing.assert_close(preferred["boxes"][square[0]], torch.tensor([600.0, 600.0, 900.0, 900.0]),
                               atol=10.0, rtol=0)  # the whole image's box: 10-px cells at its 0.1 scale
    dot = 1 - square[0]
    assert preferred["scores"][dot] == pytest.approx(0.9)  # from the tiles
    torch.testing.assert_close(preferred["boxes"][dot], torch.tensor([2506.0, 1700.0, 2530.0, 1724.0]),
                               atol=3.0, rtol=0)
    assert sorted(merged["scores"].tolist()) == pytest.approx([0.9, 0.9])  # the square's tile box won


def write_clip(path, seconds: int = 3, fps: int = 10, size=(160, 120)) -> int:
    """A clip of a square moving across a BCCD-like pink background; returns the frame count."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        n = seconds * fps
        for i in range(n):
            rgb = np.full((size[1], size[0], 3), (230, 180, 200), dtype=np.uint8)
            x = 5 + i * 4
            rgb[40:80, x:x + 40] = (120, 60, 160)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return n


def count_frames(path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_predict_video_writes_a_playable_video_and_a_json_line_per_frame(backend, trained_checkpoint, tmp_path,
                                                                         capsys):
    from dino_detector.predict import main as predict_main

    clip = tmp_path / "clip.mp4"
    frames = write_clip(clip)
    assert count_frames(clip) == frames == 30
    out = tmp_path / "out"
    assert predict_main(["--checkpoint", str(trained_checkpoint), "--video", str(clip), "--threshold", "0.0",
                         "--top_k", "5", "--backend", backend, "--device", "cpu", "--output_dir", str(out)]) == 0
    assert "frames/s" in capsys.readouterr().out
    assert count_frames(out / "clip_annotated.mp4") == frames
    lines = [json.loads(line) for line in (out / "clip_detections.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(frames))
    assert all(len(line["detections"]) == 5 for line in lines)  # threshold 0: the top 5 of every frame
    assert lines[-1]["time_s"] == pytest.approx(2.9, abs=0.01)
    det = lines[0]["detections"][0]
    assert set(det) == {"bbox", "category_id", "category_name", "score"} and det["category_name"] in {
        "Platelets", "RBC", "WBC"}


def test_predict_video_errors_are_one_line(trained_checkpoint, tmp_path, capsys):
    from dino_detector.predict import main as predict_main

    base = ["--checkpoint", str(trained_checkpoint), "--output_dir", str(tmp_path)]
    assert predict_main(base + ["--video", str(tmp_path / "missing.mp4")]) == 2
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    assert predict_main(base + ["--video", str(tmp_path / "bad.mp4")]) == 2
    assert predict_main(base) == 2  # neither --images nor --video
    assert predict_main(base + ["--images", str(tmp_path), "--backend", "torch", "--int8"]) == 2
    err = capsys.readouterr().err
    assert "video not found" in err and "not a readable video" in err and "--images" in err
