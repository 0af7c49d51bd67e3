"""Benchmark suite: our presets against the peer detectors, one command, one process tree.

    python -m benchmarks.run --suite cpu|gpu --out DIR [--only speed|accuracy] [--models a,b] [--rounds 2]
        [--minutes 12] [--skip_existing] [--peer_module ours=some.other.module]

Order of the measurements (each one a ``benchmarks.measure`` subprocess, never two at a time):

1. matmul peak;
2. speed rounds: in round r every model's training throughput, then every model's inference latency, the
   model order reversed in every other round so that slow machine drift cancels between models; the matmul
   peak again after every round. The reported value per model is the median over rounds (raw values kept);
3. the paired latency of ``Suite.pair`` (lightweight and rfdetr-small): both in one process, eager and each
   through its optimised inference path, the calls interleaved, so that drift cancels within the pair;
4. GPU suite only: the largest training batch before CUDA runs out of memory;
5. the fixed-budget accuracy runs, one after another (not for variants flagged ``speed_only``).

The models are every variant in the ``VARIANTS`` of ``benchmarks.peers.ours`` and of each peer module
(``MODULES``), read at start, except those flagged ``opt_in``; ``--models`` names the ones to measure.

Each measurement writes ``DIR/raw/<task>__<model>__<dtype>__r<round>.json`` (its log goes to ``DIR/logs``);
a failed one (peer not installed, crash, timeout) writes the error and the tail of its log there instead and
the suite goes on. ``--skip_existing`` resumes an interrupted suite: a measurement whose JSON exists without
an error and with the same arguments is not redone (failed ones are retried). ``DIR/suite.json`` holds the
settings, the models and the wall time of every invocation; at the end ``benchmarks.report`` writes
``DIR/results.{json,md}`` and the charts.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "rfdetr-small"  # the peer every ratio is taken against
# the benchmarks.peers modules measured, whether they are ours, and the variants assumed when a module's
# VARIANTS cannot be read (its measurements then fail and are reported as failures)
# the flags of a VARIANTS entry that are copied into its Entry (the Entry fields of the same names)
VARIANT_FLAGS = ("dinov2_arch", "speed_only", "opt_in")
MODULES = (("ours", True, ("lightweight", "standard", "tiny", "flexible")),
           ("rfdetr_peer", False, ("rfdetr-small",)),
           ("hf_rfdetr_peer", False, ("hf-rfdetr",)),
           ("yolo_peer", False, ("yolov8n",)))


@dataclass(frozen=True)
class Entry:
    """One detector of the suite: ``model`` names it in every table; ``module`` is its ``benchmarks.peers``
    module and ``variant`` a key of that module's ``VARIANTS``, whose flags ``dinov2_arch`` (counts as the
    DINOv2 architecture in the checks), ``speed_only`` (no accuracy run) and ``opt_in`` (measured only when
    ``--models`` names it) are copied here."""
    model: str
    module: str
    variant: str
    ours: bool = False
    dinov2_arch: bool = False
    speed_only: bool = False
    opt_in: bool = False


@dataclass(frozen=True)
class Suite:
    """Settings of one suite; ``ours_dtypes`` / ``peer_dtypes``: precisions of the speed measurements."""
    device: str
    side: int
    batch: int = 4
    minutes: float = 12.0
    rounds: int = 2
    ours_dtypes: tuple[str, ...] = ("fp32",)
    peer_dtypes: tuple[str, ...] = ("fp32",)
    maxbatch: bool = False
    train_steps: int = 3  # timed training steps ...
    train_seconds: float = 60.0  # ... or fewer once this many seconds have passed
    repeats: int = 20  # timed inference calls
    # (ours, peer): their latency measured once more in one process, eager and optimised, calls interleaved
    pair: tuple[str, str] | None = ("lightweight", REFERENCE)


SUITES = {
    "cpu": Suite(device="cpu", side=512),
    "gpu": Suite(device="cuda", side=640, ours_dtypes=("fp32", "bf16"), maxbatch=True),
}


@dataclass
class Job:
    """One measurement: its file stem, the model it measures (None for the matmul peak) and its arguments."""
    key: str
    task: str
    entry: Entry | None
    args: list[str]
    round: int | None = None
    dtype: str | None = None
    timeout_s: float = 1800.0


def child_env() -> dict:
    """The environment of every measurement: the repository importable (``benchmarks``), nothing else changed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def read_entries(modules: dict[str, str]) -> list[Entry]:
    """Every variant of every module of ``MODULES``, read from its ``VARIANTS`` in one subprocess (keeps torch
    and the detectors out of this process); a module that cannot be imported gets its default variants."""
    code = ("import json, sys\nfrom benchmarks.measure import load_peer\nout = {}\nfor name in sys.argv[1:]:\n"
            f"    try:\n        out[name] = {{k: {{f: bool(dict(v).get(f)) for f in {VARIANT_FLAGS!r}}}"
            " for k, v in load_peer(name).VARIANTS.items()}\n"
            "    except Exception as err:\n        out[name] = repr(err)\nprint(json.dumps(out))")
    names = [modules.get(m, m) for m, _, _ in MODULES]
    try:
        proc = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=900,
                              env=child_env() | {"BENCH_THREADS": "1"}, check=True)
        found = json.loads(proc.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError) as err:
        print(f"warning: cannot read the VARIANTS ({err}; {(getattr(err, 'stderr', '') or '').strip()[-300:]})")
        found = {}
    entries = []
    for (module, ours, defaults), name in zip(MODULES, names):
        variants = found.get(name)
        if not isinstance(variants, dict):
            print(f"warning: {name}.VARIANTS unreadable ({variants}); assuming {', '.join(defaults)}", flush=True)
            variants = {v: {} for v in defaults}
        for v, flags in variants.items():
            if any(e.model == v for e in entries):
                print(f"warning: {name} variant {v} skipped: a model of that name is already measured", flush=True)
            else:
                entries.append(Entry(v, module, v, ours, **flags))
    return entries


def plan(suite: Suite, entries: list[Entry], modules: dict[str, str], only: str | None) -> list[Job]:
    """The measurements in the order they run (module doc)."""
    jobs: list[Job] = []
    common = ["--side", str(suite.side), "--batch", str(suite.batch), "--device", suite.device]

    def job(task: str, e: Entry | None, dtype: str | None = None, r: int | None = None, extra=(), **kw) -> Job:
        key = "__".join([task] + ([e.model] if e else []) + ([dtype] if dtype else []) +
                        ([f"r{r}"] if r is not None else []))
        peer = ["--peer", modules.get(e.module, e.module), "--variant", e.variant] if e else []
        return Job(key, task, e, ["--task", task, *peer, *common, *(["--dtype", dtype] if dtype else []), *extra],
                   round=r, dtype=dtype, **kw)

    def dtypes(e: Entry) -> tuple[str, ...]:
        return suite.ours_dtypes if e.ours else suite.peer_dtypes

    if only in (None, "speed"):
        jobs.append(job("peak", None, r=0))
        for r in range(suite.rounds):
            order = entries if r % 2 == 0 else entries[::-1]
            # the FLOPs of a step do not change between rounds: counted in the first (one untimed step)
            timing = ["--flops"] * (r == 0) + ["--steps", str(suite.train_steps), "--seconds", str(suite.train_seconds)]
            jobs += [job("train_speed", e, d, r, timing) for e in order for d in dtypes(e)]
            jobs += [job("latency", e, d, r, ["--repeats", str(suite.repeats)]) for e in order for d in dtypes(e)]
            jobs.append(job("peak", None, r=r + 1))
        named = {e.model: e for e in entries}
        if suite.pair and all(m in named for m in suite.pair):
            first, second = (named[m] for m in suite.pair)
            jobs.append(job("latency_pair", first, suite.ours_dtypes[0] if first.ours else suite.peer_dtypes[0],
                            extra=["--pair_peer", modules.get(second.module, second.module),
                                   "--pair_variant", second.variant, "--repeats", str(suite.repeats)]))
        if suite.maxbatch:
            jobs += [job("maxbatch", e, d) for e in entries for d in dtypes(e)]
    if only in (None, "accuracy"):
        jobs += [job("accuracy", e, extra=["--minutes", str(suite.minutes)], timeout_s=suite.minutes * 90 + 1800)
                 for e in entries if not e.speed_only]
    return jobs


def summary(record: dict) -> str:
    """The headline number of a measurement, for the progress line."""
    if "error" in record:
        return f"ERROR {record['error']}: {record.get('stderr_tail', '').strip().splitlines()[-1:]}"
    task = record["task"]
    if task == "train_speed":
        flops = f", {record['achieved_gflops']:.0f} GFLOP/s" if "achieved_gflops" in record else ""
        return f"{record['images_per_s']:.2f} img/s{flops}"
    if task == "latency":
        return f"{record['median_ms']:.1f} ms (p90 {record['p90_ms']:.1f})"
    if task == "peak":
        return f"matmul {record['matmul_gflops']:.0f} GFLOP/s"
    if task == "accuracy":
        return f"AP {record['AP']:.3f} after {record['steps']} steps"
    if task == "maxbatch":
        return f"max batch {record['max_batch']}"
    if task == "latency_pair":
        return f"{record['variant']} / {record['pair_variant']}: eager {record['ratio_eager']:.2f}, " \
               f"optimised {record['ratio_optimised']:.2f}"
    return "done"


def done(raw: Path, job: Job) -> bool:
    """Whether ``raw`` holds a successful measurement made with the arguments of ``job`` (resume)."""
    if not raw.exists():
        return False
    record = json.loads(raw.read_text())
    return "error" not in record and record.get("argv", [])[:len(job.args)] == job.args


def run_job(job: Job, out: Path) -> dict:
    """Run one measurement to ``DIR/raw/<key>.json``; returns its record (an error record when it failed)."""
    raw, log = out / "raw" / f"{job.key}.json", out / "logs" / f"{job.key}.log"
    raw.parent.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    raw.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "benchmarks.measure", *job.args, "--out", str(raw)]
    if job.task == "accuracy":
        cmd += ["--run_dir", str(out / "runs" / job.entry.model)]
    start = time.perf_counter()
    with log.open("w") as handle:
        handle.write(" ".join(cmd) + "\n")
        handle.flush()
        try:
            code = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env=child_env(), cwd=ROOT,
                                  timeout=job.timeout_s).returncode
            error = None if code == 0 and raw.exists() else f"exit code {code}"
        except subprocess.TimeoutExpired:
            error = f"timeout after {job.timeout_s:.0f} s"
    if error is None:
        record = json.loads(raw.read_text())
    else:
        record = {"task": job.task, "error": error, "argv": cmd[3:], "stderr_tail": log.read_text()[-3000:]}
    record.update(key=job.key, model=job.entry.model if job.entry else None, round=job.round, dtype=job.dtype,
                  wall_s=time.perf_counter() - start)
    raw.write_text(json.dumps(record, indent=1, default=str))
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=SUITES, default="cpu")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", choices=["speed", "accuracy"], help="run one half of the suite")
    parser.add_argument("--models", help="comma-separated model names to measure (default: all but the opt-in ones)")
    parser.add_argument("--minutes", type=float, help="training budget of the accuracy runs")
    parser.add_argument("--rounds", type=int, help="speed rounds")
    parser.add_argument("--side", type=int, help="image side of the speed measurements")
    parser.add_argument("--batch", type=int, help="training batch of the speed measurements")
    parser.add_argument("--skip_existing", action="store_true", help="resume: keep measurements already in DIR/raw")
    parser.add_argument("--dry_run", action="store_true", help="print the measurements in order and stop")
    parser.add_argument("--peer_module", action="append", default=[], metavar="NAME=DOTTED",
                        help="measure NAME (ours, rfdetr_peer, ...) with another module implementing the interface")
    args = parser.parse_args(argv)
    overrides = {k: getattr(args, k) for k in ("minutes", "rounds", "side", "batch") if getattr(args, k) is not None}
    suite = dataclasses.replace(SUITES[args.suite], **overrides)
    modules = dict(item.split("=", 1) for item in args.peer_module)

    entries = read_entries(modules)
    if args.models:
        wanted = args.models.split(",")
        unknown = sorted(set(wanted) - {e.model for e in entries})
        if unknown:
            parser.error(f"unknown models {unknown}; known: {[e.model for e in entries]}")
        entries = [e for e in entries if e.model in wanted]
    else:
        entries = [e for e in entries if not e.opt_in]
    jobs = plan(suite, entries, modules, args.only)
    if args.dry_run:
        print("\n".join(f"{i:3d} {j.key}: {' '.join(j.args)}" for i, j in enumerate(jobs, 1)))
        return

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    meta_path = out / "suite.json"  # models of earlier invocations into DIR stay listed (their raw files stay too)
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {"sessions": []}
    known = {e["model"]: e for e in meta.get("entries", [])} | {e.model: dataclasses.asdict(e) for e in entries}
    meta.update(suite=args.suite, settings=dataclasses.asdict(suite), reference=REFERENCE, modules=modules,
                entries=list(known.values()))
    session = {"started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "argv": sys.argv[1:],
               "measurements": len(jobs), "wall_s": None}
    meta["sessions"].append(session)
    meta_path.write_text(json.dumps(meta, indent=1))

    start = time.perf_counter()
    print(f"{args.suite} suite: {len(jobs)} measurements of {len(entries)} models -> {out}", flush=True)
    try:
        for i, job in enumerate(jobs, 1):
            elapsed = datetime.timedelta(seconds=round(time.perf_counter() - start))
            raw = out / "raw" / f"{job.key}.json"
            if args.skip_existing and done(raw, job):
                print(f"[{i:3d}/{len(jobs)} +{elapsed}] {job.key}: exists, skipped", flush=True)
                continue
            print(f"[{i:3d}/{len(jobs)} +{elapsed}] {job.key} ...", end=" ", flush=True)
            record = run_job(job, out)
            print(f"{summary(record)} ({record['wall_s']:.0f} s)", flush=True)
    except KeyboardInterrupt:
        sys.exit("\ninterrupted; continue with the same command plus --skip_existing")
    finally:
        session["wall_s"] = time.perf_counter() - start
        meta_path.write_text(json.dumps(meta, indent=1))
        print(f"wall time {datetime.timedelta(seconds=round(session['wall_s']))}", flush=True)

    from benchmarks.report import write_report
    write_report(out)
    print(f"report: {out / 'results.md'}", flush=True)


if __name__ == "__main__":
    main()
