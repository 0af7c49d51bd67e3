"""Report of a benchmark suite directory: ``DIR/results.json``, ``DIR/results.md`` and PNG charts.

    python -m benchmarks.report DIR        # benchmarks.run calls this at its end

Reads ``DIR/raw/*.json`` (one measurement each, ``benchmarks.measure``) and ``DIR/suite.json`` (models, which
are ours, which have the DINOv2 architecture). Speed values per model are medians over the rounds; every
raw value stays in ``results.json``. Ratios are against ``rfdetr-small``; achieved GFLOP/s are compared with
the matmul peak measured in the same suite and, on a GPU of the table below, with its data-sheet peak (MFU).
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

# dense data-sheet peaks in GFLOP/s (SXM parts; H200 has the H100's compute)
_HOPPER = {"bf16": 989e3, "tf32": 494e3, "fp32": 67e3}
SPEC_PEAKS = {"H100": _HOPPER, "H200": _HOPPER}


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def load(out: Path) -> tuple[dict, list[dict]]:
    """(suite.json or a stand-in, every raw record)."""
    records = [json.loads(p.read_text()) for p in sorted((out / "raw").glob("*.json"))]
    for r in records:  # records written by hand with benchmarks.measure carry no model name
        r.setdefault("model", r.get("variant"))
    path = out / "suite.json"
    meta = json.loads(path.read_text()) if path.exists() else {}
    if not meta.get("entries"):
        names = dict.fromkeys(r["model"] for r in records if r.get("model"))
        meta["entries"] = [{"model": m, "ours": any(r.get("peer") == "ours" for r in records if r["model"] == m),
                            "dinov2_arch": False} for m in names]
    meta.setdefault("reference", "rfdetr-small")
    return meta, records


def spec_peak(gpu: str | None, dtype: str, tf32: bool) -> float | None:
    for name, peaks in SPEC_PEAKS.items():
        if gpu and name in gpu:
            return peaks["tf32" if dtype == "fp32" and tf32 else dtype]
    return None


def gflops_per_s(record: dict, rounds: list[dict]) -> float | None:
    """Achieved GFLOP/s of one training-speed record with the step FLOPs counted in any of its ``rounds``."""
    step = median(r.get("gflop_step") for r in rounds)
    return step * record["images_per_s"] / record["batch"] if step else None


def paired(records: list[dict]) -> list[dict]:
    """The ``latency_pair`` measurements: per pair its rows (variant, mode, median / p90 ms) and ratios."""
    return [{"models": [r["variant"], r["pair_variant"]], "round": r.get("round"),
             "repeats": len(r["rows"][0]["call_ms"]),
             "rows": [{k: row[k] for k in ("variant", "mode", "median_ms", "p90_ms", "first_call_s")}
                      for row in r["rows"]], "ratio_eager": r["ratio_eager"], "ratio_optimised": r["ratio_optimised"]}
            for r in records if r["task"] == "latency_pair" and "error" not in r]


def aggregate(meta: dict, records: list[dict]) -> dict:
    """Medians over rounds per (model, dtype), accuracy per model, matmul peaks, checks, errors."""
    ok = [r for r in records if "error" not in r]
    peaks = sorted((r for r in ok if r["task"] == "peak"), key=lambda r: r.get("round") or 0)
    peak = {d: median(r.get(f"matmul_gflops_{d}") for r in peaks) for d in ("fp32", "bf16")}
    machine = min((r["machine"] for r in ok if "machine" in r), key=lambda m: m["timestamp"], default={})
    speed = []
    for e in meta["entries"]:
        found = {r["dtype"] for r in ok if r["model"] == e["model"] and r["task"] in ("train_speed", "latency")}
        for dtype in sorted(found, key=lambda d: (d != "fp32", d)):
            mine = [r for r in ok if r["model"] == e["model"] and r.get("dtype") == dtype]
            train = [r for r in mine if r["task"] == "train_speed"]
            lat = [r for r in mine if r["task"] == "latency"]
            maxb = [r for r in mine if r["task"] == "maxbatch"]
            row = {"model": e["model"], "dtype": dtype, "ours": e["ours"],
                   "params": next((r["params"] for r in train + lat if r.get("params")), None),
                   "train_img_s": median(r["images_per_s"] for r in train),
                   "train_img_s_rounds": [r["images_per_s"] for r in train],
                   "first_step_s": median(r.get("first_step_s") for r in train),
                   "gflop_step": median(r.get("gflop_step") for r in train),
                   # FLOPs are counted in the first round only: achieved = its count / each round's step time
                   "achieved_gflops": median(gflops_per_s(r, train) for r in train),
                   "peak_rss_mib": median(r.get("peak_rss_mib") for r in train),
                   "cuda_peak_mib": median(r.get("cuda_peak_mib") for r in train),
                   "latency_ms": median(r["median_ms"] for r in lat),
                   "latency_p90_ms": median(r["p90_ms"] for r in lat),
                   "latency_ms_rounds": [r["median_ms"] for r in lat],
                   "gflop_forward": median(r.get("gflop_forward") for r in lat),
                   "infer_gflops": median(r.get("achieved_gflops") for r in lat),
                   "max_batch": maxb[0]["max_batch"] if maxb else None}
            ref_peak = peak.get(dtype) or peak["fp32"]
            if row["achieved_gflops"] and ref_peak:
                row["pct_matmul_peak"] = 100 * row["achieved_gflops"] / ref_peak
            spec = spec_peak(machine.get("gpu"), dtype, any(r.get("cuda_allow_tf32") for r in train))
            if row["achieved_gflops"] and spec and train and train[0].get("device") == "cuda":
                row["mfu_pct"] = 100 * row["achieved_gflops"] / spec
            speed.append(row)
    ref = meta["reference"]
    for row in speed:
        base = next((s for s in speed if s["model"] == ref and s["dtype"] == row["dtype"]), None) or \
            next((s for s in speed if s["model"] == ref), None)
        if base and row["train_img_s"] and base["train_img_s"]:
            row["train_vs_ref"] = row["train_img_s"] / base["train_img_s"]
        if base and row["latency_ms"] and base["latency_ms"]:
            row["latency_vs_ref"] = row["latency_ms"] / base["latency_ms"]
    accuracy = []
    for e in meta["entries"]:
        rec = next((r for r in ok if r["model"] == e["model"] and r["task"] == "accuracy"), None)
        if rec:
            accuracy.append({"model": e["model"], "ours": e["ours"], "dinov2_arch": e.get("dinov2_arch", False),
                             "steps": rec["steps"], "images_seen": rec.get("images_seen"),
                             "minutes": rec.get("minutes"), "train_wall_s": rec.get("train_wall_s"),
                             "curve": rec.get("curve", []), "notes": rec.get("notes", ""),
                             **{k: rec["metrics"][k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")}})
    ref_ap = next((a["AP"] for a in accuracy if a["model"] == ref), None)
    for a in accuracy:
        a["AP_vs_ref"] = a["AP"] / ref_ap if ref_ap else None
    errors = [{"key": r.get("key"), "error": r["error"],
               "last_line": (r.get("stderr_tail", "").strip().splitlines() or [""])[-1]}
              for r in records if "error" in r]
    pairs = paired(ok)
    return {"machine": machine, "matmul_peaks": [{"round": r.get("round"), **{k: v for k, v in r.items()
                                                  if k.startswith("matmul_")}} for r in peaks],
            "matmul_peak": peak, "speed": speed, "paired_latency": pairs, "accuracy": accuracy,
            "errors": errors, "checks": checks(meta, speed, accuracy, pairs)}


def checks(meta: dict, speed: list[dict], accuracy: list[dict], pairs: list[dict] = ()) -> list[dict]:
    """The must-show comparisons: PASS / FAIL, or N/A with the reason when a number is missing. Latency is
    judged on the paired measurement (both detectors in one process, calls interleaved); the medians of
    separate processes, minutes apart, are listed too but drift of the machine decides those."""
    ref = meta["reference"]
    fp32 = {s["model"]: s for s in speed if s["dtype"] == "fp32"}
    ap = {a["model"]: a["AP"] for a in accuracy}
    light, base = fp32.get("lightweight", {}), fp32.get(ref, {})
    out = []

    def check(name: str, values: dict, test, detail: str) -> None:
        """``values``: label -> number; ``test`` and ``detail.format`` get the numbers in order."""
        numbers = list(values.values())
        missing = [k for k, v in values.items() if v is None]
        verdict = f"N/A (missing {', '.join(missing)})" if missing else ("PASS" if test(*numbers) else "FAIL")
        out.append({"check": name, "result": verdict.split()[0], "values": values,
                    "line": f"{verdict}: {name}" + ("" if missing else f" ({detail.format(*numbers)})")})

    check(f"lightweight train img/s >= 1.5x {ref}",
          {"lightweight train": light.get("train_img_s"), f"{ref} train": base.get("train_img_s")},
          lambda a, b: a >= 1.5 * b, "{0:.2f} vs {1:.2f} img/s")
    pair = next((p for p in pairs if p["models"] == ["lightweight", ref]), {"rows": []})
    pair_ms = {(r["variant"], r["mode"]): r["median_ms"] for r in pair["rows"]}
    for mode, how in (("eager", "eager"), ("optimised", "each through its optimised inference path")):
        check(f"lightweight latency <= {ref} (paired in one process, {how})",
              {"lightweight latency": pair_ms.get(("lightweight", mode)),
               f"{ref} latency": pair_ms.get((ref, mode))},
              lambda a, b: a <= b, "{0:.1f} vs {1:.1f} ms")
    check(f"lightweight latency <= {ref} (separate processes, median of the rounds)",
          {"lightweight latency": light.get("latency_ms"), f"{ref} latency": base.get("latency_ms")},
          lambda a, b: a <= b, "{0:.1f} vs {1:.1f} ms")
    dino = [a for a in accuracy if a["ours"] and a["dinov2_arch"]]
    best_dino = max(dino, key=lambda a: a["AP"]) if dino else {"model": "DINOv2-architecture", "AP": None}
    check(f"best DINOv2-architecture AP >= 10x {ref}", {f"{best_dino['model']} AP": best_dino["AP"],
                                                       f"{ref} AP": ap.get(ref)},
          lambda a, b: a >= 10 * b, best_dino["model"] + " {0:.3f} vs {1:.3f}")
    ours = [a for a in accuracy if a["ours"]]
    best = max(ours, key=lambda a: a["AP"]) if ours else {"model": "ours", "AP": None}
    peers = [e["model"] for e in meta["entries"] if not e["ours"]]
    check("best of ours AP > every peer", {f"{best['model']} AP": best["AP"]} | {f"{p} AP": ap.get(p) for p in peers},
          lambda a, *rest: all(a > v for v in rest),
          best["model"] + " {0:.3f} vs " + ", ".join(f"{p} {{{i + 1}:.3f}}" for i, p in enumerate(peers)))
    return out


def fmt(value, spec: str = ".2f") -> str:
    return "—" if value is None else format(value, spec)


def markdown(meta: dict, agg: dict) -> str:
    m, peak = agg["machine"], agg["matmul_peak"]
    multi = len({s["dtype"] for s in agg["speed"]}) > 1
    gpu = any(s.get("cuda_peak_mib") for s in agg["speed"])
    ref = meta["reference"]
    walls = [s["wall_s"] for s in meta.get("sessions", []) if s.get("wall_s")]
    lines = [f"# Benchmark suite `{meta.get('suite', '?')}`", "",
             f"- machine: {m.get('hostname', '?')}, {m.get('cpu_model', '?')}"
             + (f", GPU {m['gpu']}" if m.get("gpu") else "") + f"; {m.get('threads', '?')} threads",
             f"- date: {m.get('timestamp', '?')}; torch {m.get('torch', '?')}; python {m.get('python', '?')}",
             f"- settings: {json.dumps(meta.get('settings', {}))}",
             "- matmul peak (GFLOP/s, per measurement): " + "; ".join(
                 ", ".join(f"{k.removeprefix('matmul_gflops_')} {v:.0f}" for k, v in p.items()
                           if k.startswith("matmul_gflops_")) for p in agg["matmul_peaks"])
             + f" — median fp32 {fmt(peak['fp32'], '.0f')}"
             + (f", bf16 {fmt(peak['bf16'], '.0f')}" if peak["bf16"] else ""),
             f"- suite wall time: {' + '.join(f'{w / 60:.1f}' for w in walls) or '—'} min", "", "## Checks", ""]
    lines += [f"- {c['line']}" for c in agg["checks"]]
    head = (["model"] + (["dtype"] if multi else []) +
            ["params (M)", "train img/s", "per round", f"× {ref}", "GFLOP/step", "achieved GFLOP/s", "% matmul peak"] +
            (["MFU % (spec)", "CUDA peak MiB", "max batch"] if gpu else []) +
            ["peak RSS MiB", "infer ms median / p90", f"× {ref}", "GFLOP/forward"])
    lines += ["", "## Speed (median over rounds)", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in agg["speed"]:
        cells = ([s["model"]] + ([s["dtype"]] if multi else []) +
                 [fmt(s["params"] and s["params"] / 1e6, ".1f"), fmt(s["train_img_s"]),
                  " / ".join(f"{v:.2f}" for v in s["train_img_s_rounds"]) or "—", fmt(s.get("train_vs_ref")),
                  fmt(s["gflop_step"], ".1f"), fmt(s["achieved_gflops"], ".0f"), fmt(s.get("pct_matmul_peak"), ".1f")] +
                 ([fmt(s.get("mfu_pct"), ".1f"), fmt(s["cuda_peak_mib"], ".0f"), fmt(s["max_batch"], "d")]
                  if gpu else []) +
                 [fmt(s["peak_rss_mib"], ".0f"), f"{fmt(s['latency_ms'], '.1f')} / {fmt(s['latency_p90_ms'], '.1f')}",
                  fmt(s.get("latency_vs_ref")), fmt(s["gflop_forward"], ".1f")])
        lines.append("| " + " | ".join(cells) + " |")
    for p in agg["paired_latency"]:
        lines += ["", f"## Paired latency: {' and '.join(p['models'])} in one process, batch 1, "
                  f"{p['repeats']} interleaved calls each", "",
                  "| model | path | median ms | p90 ms | first call s |", "|---|---|---|---|---|"]
        lines += [f"| {r['variant']} | {r['mode']} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | "
                  f"{r['first_call_s']:.1f} |" for r in p["rows"]]
        lines += ["", f"Ratio {p['models'][0]} / {p['models'][1]}: eager {p['ratio_eager']:.2f}, "
                  f"optimised {p['ratio_optimised']:.2f}. Optimised: ours as `predict --compile` runs it "
                  "(torch.compile, frozen weights); rfdetr as its `RFDETR.inference()` default (TorchScript trace)."]
    head = ["model", "steps", "AP", "AP50", "AP75", "APs", "APm", "APl", f"AP × {ref}"]
    lines += ["", "## Accuracy (fixed training budget, BCCD val, one evaluator)", "",
              "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in agg["accuracy"]:
        lines.append("| " + " | ".join([a["model"], str(a["steps"])] + [fmt(a[k], ".3f") for k in head[2:8]] +
                                       [fmt(a["AP_vs_ref"], ".1f")]) + " |")
    if agg["errors"]:
        lines += ["", "## Failed measurements", ""]
        lines += [f"- `{e['key']}`: {e['error']} — {e['last_line'][:200]}" for e in agg["errors"]]
    lines += ["", "Charts: ![throughput](throughput.png) ![latency](latency.png) ![AP vs time](ap_vs_time.png)", ""]
    return "\n".join(lines)


def charts(out: Path, agg: dict) -> None:
    """throughput.png, latency.png (bars, one dot per round) and ap_vs_time.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for name, key, rounds, label in (("throughput", "train_img_s", "train_img_s_rounds", "training images/s"),
                                     ("latency", "latency_ms", "latency_ms_rounds", "inference ms (batch 1)")):
        rows = [s for s in agg["speed"] if s[key] is not None]
        fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(rows) + 2), 4))
        names = [s["model"] + ("" if s["dtype"] == "fp32" else f"\n{s['dtype']}") for s in rows]
        ax.bar(names, [s[key] for s in rows], color=["tab:blue" if s["ours"] else "tab:gray" for s in rows])
        for i, s in enumerate(rows):
            ax.plot([i] * len(s[rounds]), s[rounds], "k.", ms=5)
            ax.annotate(f"{s[key]:.3g}", (i, s[key]),
                        ha="center", va="bottom", fontsize=8)
        ax.set_ylabel(label)
        ax.set_title(f"{label} (blue: ours, dots: rounds)")
        ax.tick_params(axis="x", labelsize=8)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=110)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, a in enumerate(agg["accuracy"]):
        color, style = f"C{i}", "-" if a["ours"] else "--"
        if a["curve"]:
            ax.plot([p[0] / 60 for p in a["curve"]], [p[1] for p in a["curve"]], style, color=color,
                    marker="." if len(a["curve"]) <= 40 else None, label=a["model"])
        x = a["minutes"] or (a["curve"][-1][0] / 60 if a["curve"] else 0)
        ax.plot([x], [a["AP"]], "*", color=color, ms=12, label=None if a["curve"] else a["model"])
    ax.set_xlabel("training minutes")
    ax.set_ylabel("AP (BCCD val)")
    ax.set_title("AP vs training time (lines: each detector's own log; stars: common evaluator)")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    if agg["accuracy"]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "ap_vs_time.png", dpi=110)
    plt.close(fig)


def write_report(out: Path) -> dict:
    """results.json, results.md and the charts of the suite directory ``out``; returns the aggregate."""
    out = Path(out)
    meta, records = load(out)
    agg = aggregate(meta, records)
    (out / "results.json").write_text(json.dumps({"suite": meta, **agg, "raw": records}, indent=1, default=str))
    (out / "results.md").write_text(markdown(meta, agg))
    charts(out, agg)
    return agg


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m benchmarks.report DIR")
    for line in write_report(Path(sys.argv[1]))["checks"]:
        print(line["line"])
