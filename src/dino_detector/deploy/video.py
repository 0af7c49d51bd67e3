"""Detection on every frame of a video through any backend, with PyAV (FFmpeg) for decoding and encoding.

Writes an annotated video (H.264 in MP4 where FFmpeg has an H.264 encoder, else MPEG-4 Part 2; the input's
frame rate) and one JSON line per frame: {"frame": i, "time_s": t, "detections": [{"bbox": [x, y, w, h],
"category_id", "category_name", "score"}]}, in the input's pixels.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from ..data.transforms import resize_for_inference
from .slicing import SliceSettings, sliced_detect

log = logging.getLogger(__name__)
CODECS = ("libx264", "h264", "mpeg4")  # first one FFmpeg can encode with
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")


@dataclass
class VideoRun:
    frames: int
    detections: int
    seconds: float  # wall time of the whole pass (decode, detect, draw, encode)
    model_seconds: float
    video: Path | None
    jsonl: Path

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def _pyav():
    try:
        import av
    except ImportError:
        raise RuntimeError("video needs PyAV: pip install 'dino_detector[video]'") from None
    return av


def _encoder(av) -> str:
    for codec in CODECS:
        try:
            av.codec.Codec(codec, "w")
            return codec
        except Exception:  # noqa: BLE001 (PyAV raises its own error types for an unknown codec)
            continue
    raise RuntimeError("this FFmpeg build has no H.264 or MPEG-4 encoder")


def predict_video(backend, path: str | Path, output_dir: str | Path, *, threshold: float = 0.5, top_k: int = 100,
                  batch_size: int = 4, slicing: SliceSettings | None = None,
                  annotate: Callable | None = None, progress: bool = True) -> VideoRun:
    """Detect on every frame of ``path``; ``annotate(pil_image, det) -> pil_image`` draws (None: no video)."""
    av = _pyav()
    path, out = Path(path), Path(output_dir)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    out.mkdir(parents=True, exist_ok=True)
    try:
        source = av.open(str(path))
    except av.error.FFmpegError as err:
        raise ValueError(f"{path} is not a readable video: {err}") from None
    if not source.streams.video:
        raise ValueError(f"{path} has no video stream")
    stream = source.streams.video[0]
    rate = stream.average_rate or 25
    jsonl, video_path = out / f"{path.stem}_detections.jsonl", out / f"{path.stem}_annotated.mp4" if annotate else None
    sink = av.open(str(video_path), "w") if annotate else None
    writer = None
    names = dict(zip(backend.category_ids, backend.class_names))
    frames = found = 0
    model_s, start = 0.0, time.perf_counter()

    def flush(pending, lines):
        nonlocal writer, found, model_s
        tensors = [torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255) for _, _, rgb in pending]
        t0 = time.perf_counter()
        if slicing is not None:
            dets = [sliced_detect(backend, t, slicing, threshold=threshold, top_k=top_k) for t in tensors]
        else:
            dets = backend.detect([resize_for_inference(t, backend.resize) for t in tensors],
                                  [tuple(t.shape[-2:]) for t in tensors], threshold=threshold, top_k=top_k)
        model_s += time.perf_counter() - t0
        for (index, seconds, rgb), det in zip(pending, dets):
            found += len(det["scores"])
            entries = [{"bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                        "category_id": int(c), "category_name": names[int(c)], "score": round(float(s), 5)}
                       for (x0, y0, x1, y1), s, c in zip(det["boxes"].tolist(), det["scores"].tolist(),
                                                         det["category_ids"].tolist())]
            lines.write(json.dumps({"frame": index, "time_s": round(seconds, 4), "detections": entries}) + "\n")
            if sink is not None:
                from PIL import Image
                drawn = annotate(Image.fromarray(rgb), det)
                if writer is None:  # the first drawn frame fixes the size (even, as yuv420p needs)
                    writer = sink.add_stream(_encoder(av), rate=rate)
                    writer.width, writer.height = drawn.width // 2 * 2, drawn.height // 2 * 2
                    writer.pix_fmt = "yuv420p"
                frame = av.VideoFrame.from_ndarray(np.asarray(drawn.convert("RGB")), format="rgb24")
                for packet in writer.encode(frame.reformat(writer.width, writer.height, format="yuv420p")):
                    sink.mux(packet)

    try:
        with jsonl.open("w") as lines, tqdm(total=stream.frames or None, desc="video", unit="frame",
                                             disable=not progress, dynamic_ncols=True) as bar:
            pending = []
            for frame in source.decode(stream):
                seconds = float(frame.pts * stream.time_base) if frame.pts is not None else frames / float(rate)
                pending.append((frames, seconds, frame.to_ndarray(format="rgb24")))
                frames += 1
                if len(pending) == batch_size:
                    flush(pending, lines)
                    pending = []
                    bar.update(batch_size)
            if pending:
                flush(pending, lines)
                bar.update(len(pending))
        if writer is not None:
            for packet in writer.encode():
                sink.mux(packet)
    finally:
        source.close()
        if sink is not None:
            sink.close()
    if frames == 0:
        raise ValueError(f"{path} has no decodable frames")
    return VideoRun(frames, found, time.perf_counter() - start, model_s, video_path, jsonl)
