"""One benchmark measurement in its own process, written as one JSON file (``benchmarks.run`` starts these).

    python -m benchmarks.measure --peer MODULE --variant NAME --task TASK --out FILE.json
        [--side 512] [--batch 4] [--minutes 12] [--device cpu|cuda] [--dtype fp32|bf16] [--flops]

``MODULE`` is a module of ``benchmarks.peers`` (``ours``, ``rfdetr_peer``, ...) or any dotted module path that
implements the interface of ``benchmarks/peers/__init__.py``. Tasks:

- ``train_speed``: ``train_step(variant, side, batch)``; warm-up steps (the first timed alone as
  ``first_step_s``), then timed steps until ``--steps`` are done or ``--seconds`` have passed (at least 2);
  images/s = batch / median step time; peak RSS; CUDA peak memory; with ``--flops`` the FLOPs of one step
  (``torch.utils.flop_counter``, counted in a separate untimed call) and the achieved GFLOP/s.
- ``latency``: ``inference(variant, side)``; 3 warm-up calls, then median and p90 of ``--repeats`` (20)
  calls; FLOPs of one forward and the achieved GFLOP/s.
- ``latency_pair``: two detectors (``--peer`` / ``--variant`` and ``--pair_peer`` / ``--pair_variant``),
  each eager and through its optimised path (``inference(..., compile=True)``), in one process with the
  calls of all four interleaved (drift cancels); medians, p90s and the ratios first / second per mode.
- ``accuracy``: ``train_for_budget(variant, BccdData(), minutes, out_dir, seed)``; its detections (top 100
  per image by score) scored against BCCD val by ``dino_detector.engine.evaluator.score_results``.
- ``flops``: FLOPs of one training step and of one forward, no timing.
- ``peak``: median of 5 square matmuls (2048² on CPU, 8192² on CUDA) in fp32 (and bf16 on CUDA), GFLOP/s.
- ``maxbatch``: training batch doubled from 1 until CUDA runs out of memory; the largest that ran.

``--dtype bf16`` passes ``dtype="bf16"`` to the peer when its function takes a ``dtype`` argument and
otherwise runs the callable under ``torch.autocast``; ``device`` is passed the same way. Threads: the core
count (``BENCH_THREADS`` overrides), set in ``OMP_NUM_THREADS`` before torch is imported.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib
import inspect
import json
import os
import platform
import resource
import socket
import statistics
import sys
import time
from pathlib import Path

THREADS = int(os.environ.get("BENCH_THREADS") or len(os.sched_getaffinity(0)))
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(THREADS)

import torch  # noqa: E402  (after the thread settings)

torch.set_num_threads(THREADS)

from benchmarks.flops import count_flops  # noqa: E402
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def load_peer(name: str):
    """``ours`` -> ``benchmarks.peers.ours``; a dotted path is imported as it is."""
    return importlib.import_module(name if "." in name else f"benchmarks.peers.{name}")


def call_peer(fn, *args, device: str, dtype: str | None, **kwargs):
    """``fn(*args, **kwargs)`` plus ``device`` / ``dtype`` where ``fn``'s signature takes them (``dtype=None``:
    never passed). Returns (result, whether the peer handled the dtype itself)."""
    params = inspect.signature(fn).parameters
    if "device" in params:
        kwargs["device"] = device
    elif device != "cpu":
        raise SystemExit(f"{fn.__module__}.{fn.__name__} takes no device argument: cannot measure it on {device}")
    own_dtype = dtype is not None and "dtype" in params
    if own_dtype:
        kwargs["dtype"] = dtype  # the name: "fp32" or "bf16"
    return fn(*args, **kwargs), own_dtype or dtype == "fp32"


def precision_context(device: str, dtype: str, own_dtype: bool):
    """autocast to ``dtype`` unless the peer already runs in it."""
    if own_dtype:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=DTYPES[dtype])


def timed(fn, device: str) -> float:
    """Seconds of one call, device work included."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def count_gflop(fn) -> float:
    """GFLOP of one call of ``fn`` (matmuls, convolutions and attention, CPU attention included)."""
    return count_flops(fn) / 1e9


def count_params(fn, peer=None, variant: str | None = None) -> dict:
    """Parameter counts of the model behind a peer callable, best effort: ``fn.model`` or the ``nn.Module`` /
    optimizer objects its closure holds, else the peer's ``parameters(variant)``. Empty when none is found."""
    found = [getattr(fn, "model", None)] + [c.cell_contents for c in (getattr(fn, "__closure__", None) or ())
                                            if c.cell_contents is not None]
    modules = [m for m in found if isinstance(m, torch.nn.Module)]
    optimizers = [o for o in found if isinstance(o, torch.optim.Optimizer)]
    out = {}
    if modules:
        out["params"] = max(sum(p.numel() for p in m.parameters()) for m in modules)
    if optimizers:
        out["trainable_params"] = sum(p.numel() for g in optimizers[0].param_groups for p in g["params"])
    if "params" not in out and hasattr(peer, "parameters"):
        out["params"] = int(peer.parameters(variant))
    return out


def machine() -> dict:
    """Where and with what the measurement ran."""
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    info = {"hostname": socket.gethostname(), "cpu_model": cpu, "cpu_count": os.cpu_count(), "threads": THREADS,
            "torch": torch.__version__, "python": platform.python_version(),
            "timestamp": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def rss_now_mib() -> float:
    """Resident memory of this process now (Linux), MiB."""
    with contextlib.suppress(OSError, StopIteration):
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024
    return float("nan")


def memory(device: str) -> dict:
    """Peak RSS of the process (imports included: see ``rss_baseline_mib``) and CUDA's peak allocation."""
    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device == "cuda":
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        out["cuda_allow_tf32"] = torch.backends.cuda.matmul.allow_tf32
    return out


def task_train_speed(peer, a) -> dict:
    build = time.perf_counter()
    fn, own = call_peer(peer.train_step, a.variant, a.side, a.batch, device=a.device, dtype=a.dtype)
    out = {"build_s": time.perf_counter() - build, **count_params(fn, peer, a.variant)}
    with precision_context(a.device, a.dtype, own):
        out["first_step_s"] = timed(fn, a.device)
        if a.flops:
            out["gflop_step"] = count_gflop(fn)
        for _ in range(a.warmup - 1):
            timed(fn, a.device)
        times, start = [], time.perf_counter()
        while len(times) < 2 or (len(times) < a.steps and time.perf_counter() - start < a.seconds):
            times.append(timed(fn, a.device))
    step = statistics.median(times)
    out.update(step_s=times, median_step_s=step, images_per_s=a.batch / step, **memory(a.device))
    if a.flops:
        out["achieved_gflops"] = out["gflop_step"] / step
    return out


def call_stats(seconds: list[float]) -> dict:
    """Sorted call times in ms with their median and p90 (the latency tasks' summary)."""
    ms = sorted(t * 1e3 for t in seconds)
    return {"call_ms": ms, "median_ms": statistics.median(ms),
            "p90_ms": ms[min(len(ms) - 1, round(0.9 * (len(ms) - 1)))]}


def task_latency(peer, a) -> dict:
    build = time.perf_counter()
    fn, own = call_peer(peer.inference, a.variant, a.side, device=a.device, dtype=a.dtype)
    out = {"build_s": time.perf_counter() - build, **count_params(fn, peer, a.variant)}
    with precision_context(a.device, a.dtype, own):
        out["first_call_s"] = timed(fn, a.device)
        out["gflop_forward"] = count_gflop(fn)
        for _ in range(2):  # three warm-up calls with the first
            timed(fn, a.device)
        times = [timed(fn, a.device) for _ in range(a.repeats)]
    out.update(call_stats(times), **memory(a.device))
    out["achieved_gflops"] = out["gflop_forward"] / out["median_ms"] * 1e3
    return out


def task_latency_pair(peer, a) -> dict:
    """Two detectors' batch-1 latency in one process, eager and each through its own optimised inference path
    (the peer's ``inference(..., compile=True)``), the calls of all four interleaved so that machine drift
    hits them alike: in every repeat each callable runs once, the order rotated from repeat to repeat."""
    other = load_peer(a.pair_peer)
    callables = {}
    for module, name, variant in ((peer, a.peer, a.variant), (other, a.pair_peer, a.pair_variant)):
        if "compile" not in inspect.signature(module.inference).parameters:
            raise SystemExit(f"{name}.inference takes no compile argument: no optimised path to measure")
        for mode, flag in (("eager", False), ("optimised", True)):
            fn, own = call_peer(module.inference, variant, a.side, device=a.device, dtype=a.dtype, compile=flag)
            callables[(variant, mode)] = (fn, own)
    first, times = {}, {key: [] for key in callables}
    for key, (fn, own) in callables.items():
        with precision_context(a.device, a.dtype, own):
            first[key] = timed(fn, a.device)  # compilation / tracing happens here
            for _ in range(2):
                timed(fn, a.device)
    keys = list(callables)
    for i in range(a.repeats):
        for key in keys[i % len(keys):] + keys[:i % len(keys)]:
            fn, own = callables[key]
            with precision_context(a.device, a.dtype, own):
                times[key].append(timed(fn, a.device))
    rows = [{"variant": variant, "mode": mode, "first_call_s": first[(variant, mode)], **call_stats(values)}
            for (variant, mode), values in times.items()]
    med = {(r["variant"], r["mode"]): r["median_ms"] for r in rows}
    return {"pair_peer": a.pair_peer, "pair_variant": a.pair_variant, "rows": rows,
            **{f"ratio_{mode}": med[(a.variant, mode)] / med[(a.pair_variant, mode)]
               for mode in ("eager", "optimised")}, **memory(a.device)}


def task_flops(peer, a) -> dict:
    fn, own = call_peer(peer.train_step, a.variant, a.side, a.batch, device=a.device, dtype=a.dtype)
    with precision_context(a.device, a.dtype, own):
        out = {"gflop_step": count_gflop(fn), **count_params(fn, peer, a.variant)}
    del fn
    fn, own = call_peer(peer.inference, a.variant, a.side, device=a.device, dtype=a.dtype)
    with precision_context(a.device, a.dtype, own):
        out["gflop_forward"] = count_gflop(fn)
    return out


def task_accuracy(peer, a) -> dict:
    from pycocotools.coco import COCO

    from benchmarks.peers import BccdData
    from dino_detector.engine.evaluator import score_results

    out_dir = Path(a.run_dir or Path(a.out).with_suffix(""))
    out_dir.mkdir(parents=True, exist_ok=True)
    data = BccdData()
    start = time.perf_counter()
    run, _ = call_peer(peer.train_for_budget, a.variant, data, a.minutes, out_dir, a.seed,
                       device=a.device, dtype=None)  # the peer's own training precision
    wall = time.perf_counter() - start
    by_image: dict[int, list[dict]] = {}
    for r in run.results:
        by_image.setdefault(int(r["image_id"]), []).append(r)
    results = [r for dets in by_image.values() for r in sorted(dets, key=lambda d: -d["score"])[:100]]
    (out_dir / "results.json").write_text(json.dumps(results))
    with contextlib.redirect_stdout(sys.stderr):
        coco_gt = COCO(str(data.val_json))
        metrics, table = score_results(coco_gt, results)
    print(table, file=sys.stderr)
    return {"metrics": metrics, "AP": metrics["AP"], "curve": [list(p) for p in run.curve], "steps": run.steps,
            "images_seen": run.images_seen, "notes": run.notes, "detections": len(results),
            "train_wall_s": wall, "run_dir": str(out_dir), **memory(a.device)}


def task_peak(peer, a) -> dict:
    n = a.matmul_n or (8192 if a.device == "cuda" else 2048)
    out = {"matmul_n": n}
    for name in ("fp32", "bf16") if a.device == "cuda" else ("fp32",):
        x, y = (torch.randn(n, n, device=a.device, dtype=DTYPES[name]) for _ in range(2))
        timed(lambda: x @ y, a.device)
        seconds = statistics.median(timed(lambda: x @ y, a.device) for _ in range(5))
        out[f"matmul_gflops_{name}"] = 2 * n**3 / seconds / 1e9
    out["matmul_gflops"] = out["matmul_gflops_fp32"]
    return out


def task_maxbatch(peer, a) -> dict:
    if a.device != "cuda":
        raise SystemExit("maxbatch needs --device cuda")
    largest, tried, batch, fn = 0, [], 1, None
    while batch <= a.max_batch:
        try:
            fn, own = call_peer(peer.train_step, a.variant, a.side, batch, device=a.device, dtype=a.dtype)
            with precision_context(a.device, a.dtype, own):
                fn()
                fn()
            largest = batch
            tried.append({"batch": batch, "ok": True, "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20})
        except (torch.cuda.OutOfMemoryError, RuntimeError) as err:  # cuBLAS / cuDNN allocation failures too
            if not isinstance(err, torch.cuda.OutOfMemoryError) and "out of memory" not in str(err).lower() \
                    and "ALLOC_FAILED" not in str(err):
                raise
            tried.append({"batch": batch, "ok": False, "error": str(err).splitlines()[0][:200]})
            break
        finally:
            fn = None
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        batch *= 2
    return {"max_batch": largest, "tried": tried, "capped": largest >= a.max_batch}


TASKS = {"train_speed": task_train_speed, "latency": task_latency, "latency_pair": task_latency_pair,
         "accuracy": task_accuracy,
         "flops": task_flops, "peak": task_peak, "maxbatch": task_maxbatch}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--peer", help="benchmarks.peers module (ours, rfdetr_peer, ...) or a dotted path")
    parser.add_argument("--variant")
    parser.add_argument("--out", required=True)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--flops", action="store_true", help="train_speed: also count the FLOPs of one step")
    parser.add_argument("--warmup", type=int, default=2, help="train_speed warm-up steps")
    parser.add_argument("--steps", type=int, default=5, help="train_speed: timed steps ...")
    parser.add_argument("--seconds", type=float, default=60.0, help="... or until this many seconds passed")
    parser.add_argument("--repeats", type=int, default=20, help="latency: timed calls")
    parser.add_argument("--pair_peer", help="latency_pair: the second detector's module ...")
    parser.add_argument("--pair_variant", help="... and variant")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--run_dir", help="accuracy: the peer's output folder (default: next to --out)")
    parser.add_argument("--matmul_n", type=int, default=0, help="peak: matrix side (0: 2048 CPU, 8192 CUDA)")
    parser.add_argument("--max_batch", type=int, default=1024, help="maxbatch: stop doubling here")
    a = parser.parse_args(argv)
    if a.task != "peak" and not (a.peer and a.variant):
        parser.error(f"--task {a.task} needs --peer and --variant")
    if a.task == "latency_pair" and not (a.pair_peer and a.pair_variant):
        parser.error("--task latency_pair needs --pair_peer and --pair_variant")
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available")
    torch.manual_seed(a.seed)
    peer = load_peer(a.peer) if a.peer else None
    baseline = rss_now_mib()  # torch and the peer imported, no model yet
    start = time.perf_counter()
    values = TASKS[a.task](peer, a)
    record = {"task": a.task, "peer": a.peer, "variant": a.variant, "side": a.side,
              "batch": 1 if a.task.startswith("latency") else a.batch, "device": a.device,
              "dtype": None if a.task in ("accuracy", "peak") else a.dtype,
              "minutes": a.minutes if a.task == "accuracy" else None, "rss_baseline_mib": baseline,
              **values, "measure_wall_s": time.perf_counter() - start, "machine": machine(), "argv": sys.argv[1:]}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part")
    tmp.write_text(json.dumps(record, indent=1, default=str))
    tmp.replace(out)  # a JSON in place means a finished measurement


if __name__ == "__main__":
    main()
