"""Smoke test of one peer adapter: train_step, inference, and a short train_for_budget scored on BCCD val.

    .venv/bin/python -m benchmarks.peers.smoke PEER [VARIANT] [--minutes 1.0] [--skip-budget | --skip-timing]
    # PEER: rfdetr_peer | hf_rfdetr_peer | yolo_peer (or ours); run nothing else meanwhile

Every outgoing connection is refused and reported, so an adapter that tries the network fails loudly.
Timings: fastest of 2 steps after one warm-up (batch 4, 512 px), fastest of 5 batch-1 inferences.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import math
import socket
import tempfile
import time
from pathlib import Path


def _block_network() -> None:
    def refuse(self, address, *args, **kwargs):
        local = isinstance(address, tuple) and address and address[0] in ("127.0.0.1", "::1", "localhost")
        if isinstance(address, str) or local:  # unix / loopback sockets (dataloader workers) are fine
            return _connect(self, address, *args, **kwargs)
        print(f"!! network access attempted: {address}", flush=True)
        raise OSError(f"smoke test: network disabled ({address})")

    _connect = socket.socket.connect
    socket.socket.connect = refuse


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("peer")
    ap.add_argument("variant", nargs="?")
    ap.add_argument("--minutes", type=float, default=1.0)
    ap.add_argument("--side", type=int, default=512)
    ap.add_argument("--skip-budget", action="store_true")
    ap.add_argument("--skip-timing", action="store_true", help="only (c)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    _block_network()
    mod = importlib.import_module(f"benchmarks.peers.{args.peer}")
    variant = args.variant or next(iter(mod.VARIANTS))
    if not args.skip_timing:
        _timings(mod, variant, args.side)
    if args.skip_budget:
        return
    _budget(mod, args.peer, variant, args.minutes, args.out)


def _timings(mod, variant: str, side: int) -> None:
    import torch

    step = mod.train_step(variant, side, 4)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        loss = getattr(step, "loss", float("nan"))
        assert math.isfinite(loss), f"loss {loss}"
    print(f"(a) train_step {variant} {side}px batch 4: {min(times[1:]):.2f} s/step (loss {loss:.3f}), "
          f"threads {torch.get_num_threads()}", flush=True)
    del step

    run = mod.inference(variant, side)
    run()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    print(f"(b) inference {variant} {side}px batch 1: {1000 * min(times):.0f} ms, output {_describe(run)}",
          flush=True)
    del run


def _budget(mod, peer: str, variant: str, minutes: float, out) -> None:
    from . import BccdData
    data = BccdData()
    out = Path(out or tempfile.mkdtemp(prefix=f"smoke_{peer}_"))
    t = time.perf_counter()
    res = mod.train_for_budget(variant, data, minutes, out, 0)
    wall = time.perf_counter() - t
    val = json.loads(Path(data.val_json).read_text())
    ids = {im["id"]: (im["width"], im["height"]) for im in val["images"]}
    per_image = {}
    for r in res.results:
        assert r["image_id"] in ids and r["category_id"] in (1, 2, 3), r
        (x, y, w, h), (width, height) = r["bbox"], ids[r["image_id"]]
        assert -1 <= x and -1 <= y and x + w <= width + 1 and y + h <= height + 1 and w >= 0 and h >= 0, r
        per_image[r["image_id"]] = per_image.get(r["image_id"], 0) + 1
    most = max(per_image.values(), default=0)
    curve = [(round(s), round(a, 4), src) for s, a, src in res.curve]
    print(f"(c) train_for_budget {minutes} min: wall {wall:.0f} s, {res.steps} steps, {res.images_seen} images, "
          f"{len(res.results)} detections on {len(per_image)}/{len(ids)} images (max {most}/image), curve {curve}",
          flush=True)
    from pycocotools.coco import COCO

    from dino_detector.engine.evaluator import score_results
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(data.val_json))
    metrics, _ = score_results(gt, res.results)
    print(f"    AP {metrics['AP']:.4f}  AP50 {metrics['AP50']:.4f}  notes: {res.notes}  (out: {out})", flush=True)


def _describe(run) -> str:
    out = getattr(run, "out", None)
    if out is None:
        return "?"
    if isinstance(out, list) and out and isinstance(out[0], dict):
        return "{" + ", ".join(f"{k}: {tuple(v.shape)}" for k, v in out[0].items() if hasattr(v, "shape")) + "}"
    if isinstance(out, list) and out and hasattr(out[0], "shape"):
        return str(tuple(out[0].shape))
    return type(out).__name__


if __name__ == "__main__":
    main()
