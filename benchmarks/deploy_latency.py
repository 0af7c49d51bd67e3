"""Paired CPU latency of the deployment backends against the peers' own fastest CPU paths (issue 24).

    python -m benchmarks.deploy_latency --out FILE.json [--side 512] [--repeats 20]
        [--calibration_images DIR] [--variants lightweight two-stage] [--no_peers]

One process, batch 1, ``--side``² RGB input, every callable warmed up (3 calls), then ``--repeats`` rounds in
which each callable runs twice, in turn, the second call timed (machine drift cancels; the first absorbs the
previous runtime's spinning threads: ``interleaved``); median and p90 per callable. Ours: the
``lightweight`` and ``two-stage`` architectures (random weights: latency does not depend on them) through
``torch`` (eager), ``onnxruntime``, ``openvino`` (after its warm-up, the graph compiled for the one input
shape; ``openvino dynamic shapes``: the exported graph as it is) and ``openvino`` / ``onnxruntime`` INT8
(quantised on ``--calibration_images``, default the BCCD JPEGs), each call ``backend.detect`` with
post-processing to the top 100. Peers: YOLOv8n (3 classes, fused) exported by Ultralytics itself
(``export(format="openvino")``, run by OpenVINO, plus its ``non_max_suppression`` as its predictor does) and
eager; rfdetr-small through its traced ``export()`` path and eager. GFLOP/s: FLOPs of one eager forward (benchmarks/flops.py) over
the median time. Threads: the core count (``BENCH_THREADS`` overrides).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

THREADS = int(os.environ.get("BENCH_THREADS") or len(os.sched_getaffinity(0)))
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(THREADS)

import torch  # noqa: E402

torch.set_num_threads(THREADS)
BCCD_IMAGES = Path(__file__).resolve().parents[1] / "../shared/datasets/bccd/JPEGImages"


def ours(variant: str, side: int, calibration: str, work: Path) -> dict:
    """{label: (callable, forward FLOPs)} for every backend of one of our variants."""
    from benchmarks.flops import count_flops
    from benchmarks.peers.ours import _model
    from dino_detector.deploy.backends import TorchBackend
    from dino_detector.deploy.loader import open_backend

    model, _ = _model(variant)
    model.eval()
    folder = work / variant
    if not (folder / "model.safetensors").is_file():  # kept, so that its exports are reused by a rerun
        model.save_pretrained(folder)
    image = torch.rand(3, side, side, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        flops = count_flops(lambda: model([image]))
    backends = {"torch": TorchBackend(model, torch.device("cpu")),
                "onnxruntime": open_backend(folder, "onnxruntime"),
                "onnxruntime int8": open_backend(folder, "onnxruntime", int8=True, calibration_images=calibration),
                "openvino": open_backend(folder, "openvino"),
                "openvino dynamic shapes": open_backend(folder, "openvino"),
                "openvino int8": open_backend(folder, "openvino", int8=True, calibration_images=calibration)}
    # "openvino" compiles the 512² graph on the warm-up's second call (deploy/backends.py); this one never does
    backends["openvino dynamic shapes"].static_shapes = 0

    def call(backend):
        return lambda: backend.detect([image], [(side, side)], threshold=0.0, top_k=100)
    shown = {"flexible": "two-stage", "flexible-lite": "two-stage-lite"}.get(variant, variant)
    return {f"{shown} {name}": (call(b), flops) for name, b in backends.items()}


def yolo(side: int, work: Path) -> dict:
    """YOLOv8n eager (its fused model + NMS) and through Ultralytics' own OpenVINO export."""
    import numpy as np
    import openvino as ov
    from ultralytics import YOLO
    from ultralytics.utils.nms import non_max_suppression

    from benchmarks.flops import count_flops
    from benchmarks.peers import yolo_peer

    yolo_peer._patch()
    eager = yolo_peer.inference("yolov8n", side)
    wrapper = YOLO("yolov8n.yaml")
    wrapper.model = yolo_peer._model("yolov8n")  # 3 classes, random weights, as in the suite
    wrapper.model.args = dict(vars(wrapper.model.args))  # the exporter reads the model's args as a dict
    wrapper.model.task, wrapper.model.names = "detect", {i: str(i) for i in range(yolo_peer.NUM_CLASSES)}
    with contextlib.chdir(work):  # it writes yolov8n_openvino_model/ into the working folder
        exported = Path(wrapper.export(format="openvino", imgsz=side, half=False, dynamic=False, batch=1,
                                       verbose=False)).resolve()
    xml = next(exported.glob("*.xml")) if exported.is_dir() else exported
    compiled = ov.Core().compile_model(str(xml), "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                         "INFERENCE_NUM_THREADS": THREADS})
    request = compiled.create_infer_request()
    image = np.random.default_rng(0).random((1, 3, side, side), dtype=np.float32)

    def run_ov():
        out = request.infer({0: image})[compiled.output(0)]
        return non_max_suppression(torch.from_numpy(np.asarray(out)), conf_thres=0.001, iou_thres=0.7, max_det=100)
    model = yolo_peer._model("yolov8n").fuse(verbose=False).eval()
    with torch.inference_mode():
        flops = count_flops(lambda: model(torch.rand(1, 3, side, side)))
    return {"yolov8n torch": (eager, flops), "yolov8n openvino (ultralytics export)": (run_ov, flops)}


def rfdetr(side: int) -> dict:
    from benchmarks.flops import count_flops
    from benchmarks.peers import rfdetr_peer

    eager = rfdetr_peer.inference("rfdetr-small", side)
    traced = rfdetr_peer.inference("rfdetr-small", side, compile=True)
    with torch.inference_mode():
        flops = count_flops(lambda: eager.model(torch.rand(1, 3, side, side)))
    return {"rfdetr-small torch": (eager, flops), "rfdetr-small traced export()": (traced, flops)}


def interleaved(calls: dict, repeats: int, warmup: int = 3, settle: int = 1) -> dict:
    """``settle`` untimed calls of a callable before each of its timed ones: the runtime that ran just before
    leaves its worker threads spinning for a while (onnxruntime's intra-op pool, OpenMP), and the next
    runtime's call shares the 2 cores with them (an OpenVINO call right after an onnxruntime one measured
    66.6 ms against 49.6 alone)."""
    for fn, _ in calls.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in calls}
    for _ in range(repeats):
        for name, (fn, _) in calls.items():
            for _ in range(settle):
                fn()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    rows = {}
    for name, ts in times.items():
        median = statistics.median(ts)
        flops = calls[name][1]
        rows[name] = {"median_ms": 1e3 * median, "p90_ms": 1e3 * sorted(ts)[int(0.9 * (len(ts) - 1))],
                      "gflop": flops / 1e9, "gflops_per_s": flops / 1e9 / median}
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--calibration_images", default=str(BCCD_IMAGES))
    parser.add_argument("--variants", nargs="+", default=["lightweight", "flexible"],
                        help="benchmarks/peers/ours.py variants (flexible: the two-stage preset; flexible-lite: "
                             "it on the flexible-lite encoder)")
    parser.add_argument("--calibration_count", type=int, default=64, help="calibration images used")
    parser.add_argument("--work", default="outputs/deploy_latency_work", help="models and their exports (reused)")
    parser.add_argument("--no_peers", action="store_true")
    args = parser.parse_args(argv)
    work = Path(args.work)
    calibration = work / "calibration"
    if not calibration.is_dir():
        calibration.mkdir(parents=True)
        for path in sorted(Path(args.calibration_images).glob("*.jpg"))[:args.calibration_count]:
            (calibration / path.name).symlink_to(path.resolve())
    calls, missing = {}, {}
    for variant in args.variants:
        calls.update(ours(variant, args.side, str(calibration), work))
    if not args.no_peers:
        for name, make in (("yolov8n", lambda: yolo(args.side, work)), ("rfdetr-small", lambda: rfdetr(args.side))):
            try:
                calls.update(make())
            except ImportError as err:  # the bench extra is not installed
                missing[name] = str(err)
    rows = interleaved(calls, args.repeats)
    result = {"side": args.side, "batch": 1, "threads": THREADS, "repeats": args.repeats, "rows": rows,
              "missing_peers": missing, "torch": torch.__version__}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print("| model and path | median ms | p90 ms | GFLOP | GFLOP/s |\n|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | {r['gflop']:.1f} | {r['gflops_per_s']:.1f} |")
    for name, why in missing.items():
        print(f"{name}: not measured ({why})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
