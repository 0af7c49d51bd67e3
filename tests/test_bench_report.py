"""The benchmark report: medians over rounds, ratios to the reference peer, the must-show verdicts, files."""
import json

from PIL import Image

from benchmarks.report import write_report

MACHINE = {"timestamp": "2026-11-26T18:00:00", "cpu": "test cpu", "threads": 2}


def _speed(model, rnd, img_s, ms, peer="x"):
    common = {"model": model, "peer": peer, "dtype": "fp32", "round": rnd, "machine": MACHINE}
    flops = {"gflop_step": 100.0} if rnd == 0 else {}  # the suite counts them in the first round only
    return [{**common, "task": "train_speed", "images_per_s": img_s, "batch": 4, **flops, "peak_rss_mib": 1000.0},
            {**common, "task": "latency", "median_ms": ms, "p90_ms": ms * 1.1, "gflop_forward": 50.0,
             "achieved_gflops": 50.0 / ms * 1e3}]


def _accuracy(model, ap, peer="x"):
    metrics = {"AP": ap, "AP50": 2 * ap, "AP75": ap, "APs": 0.0, "APm": ap, "APl": ap, "AR100": ap}
    return {"model": model, "peer": peer, "task": "accuracy", "dtype": "fp32", "metrics": metrics, "steps": 10,
            "curve": [[60.0, ap / 2, peer], [120.0, ap, peer]], "machine": MACHINE}


def test_report_takes_medians_and_judges_the_must_shows(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    records = [{"task": "peak", "round": 0, "matmul_gflops_fp32": 150.0, "machine": MACHINE}]
    # lightweight: 0.9 and 1.1 img/s over two rounds (median 1.0) vs rfdetr 0.5 and 0.7 (median 0.6)
    records += _speed("lightweight", 0, 0.9, 300.0, "ours") + _speed("lightweight", 1, 1.1, 320.0, "ours")
    records += _speed("rfdetr-small", 0, 0.5, 400.0) + _speed("rfdetr-small", 1, 0.7, 420.0)
    # paired in one process: eager lightweight loses (450 vs 440 ms), optimised it wins (400 vs 430 ms)
    rows = [{"variant": v, "mode": m, "median_ms": ms, "p90_ms": ms, "first_call_s": 1.0, "call_ms": [ms] * 3}
            for v, m, ms in (("lightweight", "eager", 450.0), ("lightweight", "optimised", 400.0),
                             ("rfdetr-small", "eager", 440.0), ("rfdetr-small", "optimised", 430.0))]
    records.append({"task": "latency_pair", "model": "lightweight", "variant": "lightweight",
                    "pair_variant": "rfdetr-small", "rows": rows, "ratio_eager": 450 / 440,
                    "ratio_optimised": 400 / 430, "machine": MACHINE})
    records += [_accuracy("lightweight", 0.12, "ours"), _accuracy("tiny", 0.45, "ours"),
                _accuracy("rfdetr-small", 0.01), _accuracy("yolov8n", 0.50)]
    for i, r in enumerate(records):
        (raw / f"{i:02d}.json").write_text(json.dumps(r))
    entries = [{"model": "lightweight", "ours": True, "dinov2_arch": True},
               {"model": "tiny", "ours": True, "dinov2_arch": True},
               {"model": "rfdetr-small", "ours": False}, {"model": "yolov8n", "ours": False}]
    (tmp_path / "suite.json").write_text(json.dumps({"entries": entries, "reference": "rfdetr-small"}))

    agg = write_report(tmp_path)
    light = next(s for s in agg["speed"] if s["model"] == "lightweight")
    assert light["train_img_s"] == 1.0 and abs(light["train_vs_ref"] - 1.0 / 0.6) < 1e-9
    assert light["latency_ms"] == 310.0 and abs(light["latency_vs_ref"] - 310.0 / 410.0) < 1e-9
    assert light["achieved_gflops"] == 25.0  # 100 GFLOP per 4-image step at a median 1.0 img/s
    verdicts = {c["check"]: c["result"] for c in agg["checks"]}
    assert verdicts["lightweight train img/s >= 1.5x rfdetr-small"] == "PASS"  # 1.67x
    assert verdicts["lightweight latency <= rfdetr-small (separate processes, median of the rounds)"] == "PASS"
    assert verdicts["lightweight latency <= rfdetr-small (paired in one process, eager)"] == "FAIL"
    assert verdicts["lightweight latency <= rfdetr-small (paired in one process, each through its optimised "
                    "inference path)"] == "PASS"
    assert verdicts["best DINOv2-architecture AP >= 10x rfdetr-small"] == "PASS"  # tiny 0.45 vs 0.01
    assert verdicts["best of ours AP > every peer"] == "FAIL"  # yolov8n 0.50 beats tiny 0.45
    md = (tmp_path / "results.md").read_text()
    assert "FAIL: best of ours AP > every peer" in md and "| lightweight" in md
    assert "| lightweight | optimised | 400.0 |" in md and "eager 1.02, optimised 0.93" in md
    for name in ("throughput", "latency", "ap_vs_time"):
        with Image.open(tmp_path / f"{name}.png") as im:
            assert im.width > 300 and len(im.convert("L").getcolors(1 << 16) or []) > 10
    assert json.loads((tmp_path / "results.json").read_text())["checks"] == agg["checks"]


def _planned(capsys, *argv) -> list[str]:
    """The measurement keys that ``benchmarks.run --dry_run`` prints, in order."""
    from benchmarks.run import main

    main(["--out", "unused", "--dry_run", *argv])
    return [line.split()[1].rstrip(":") for line in capsys.readouterr().out.splitlines() if line[:4].strip().isdigit()]


def test_suite_plan_leaves_out_opt_in_variants_unless_named(capsys):
    """The default plan measures `flexible` fully, `tiny` for speed only and not `lightweight-lora` (opt-in);
    naming it in --models brings it back."""
    keys = _planned(capsys)
    assert "accuracy__flexible" in keys and "train_speed__flexible__fp32__r0" in keys
    assert "train_speed__tiny__fp32__r1" in keys and "accuracy__tiny" not in keys
    assert not any("lightweight-lora" in k for k in keys)
    assert sum(k.startswith("accuracy__") for k in keys) == 5  # lightweight, flexible and the three peers
    # the paired latency after the speed rounds, before the long accuracy runs
    assert keys.index("peak__r2") < keys.index("latency_pair__lightweight__fp32") < keys.index("accuracy__lightweight")
    assert _planned(capsys, "--models", "lightweight-lora") == ["peak__r0", "train_speed__lightweight-lora__fp32__r0", "latency__lightweight-lora__fp32__r0",
                    "peak__r1", "train_speed__lightweight-lora__fp32__r1", "latency__lightweight-lora__fp32__r1",
                    "peak__r2"]


def test_paired_latency_interleaves_both_detectors_and_both_paths(tmp_path, monkeypatch):
    """``latency_pair`` on a stand-in peer whose calls sleep a known time: variant a 4 ms eager / 2 ms
    optimised, b 8 / 4 ms. Medians, ratios and the interleaving (every repeat runs each callable once)."""
    from benchmarks.measure import main

    (tmp_path / "fakepeers").mkdir()
    (tmp_path / "fakepeers" / "__init__.py").write_text("")
    (tmp_path / "fakepeers" / "sleepy.py").write_text(
        "import time\nCALLS = []\n"
        "def inference(variant, side, compile=False):\n"
        "    ms = {'a': 4.0, 'b': 8.0}[variant] / (2 if compile else 1)\n"
        "    def run():\n        CALLS.append((variant, compile))\n        time.sleep(ms / 1e3)\n"
        "    return run\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "pair.json"
    main(["--task", "latency_pair", "--peer", "fakepeers.sleepy", "--variant", "a", "--pair_peer", "fakepeers.sleepy",
          "--pair_variant", "b", "--repeats", "6", "--out", str(out)])
    record = json.loads(out.read_text())
    ms = {(r["variant"], r["mode"]): r["median_ms"] for r in record["rows"]}
    for key, want in {("a", "eager"): 4, ("a", "optimised"): 2, ("b", "eager"): 8, ("b", "optimised"): 4}.items():
        assert want <= ms[key] < want + 1.5, (key, ms[key])
    assert 0.4 < record["ratio_eager"] < 0.6 and 0.4 < record["ratio_optimised"] < 0.6
    from fakepeers import sleepy
    timed_calls = sleepy.CALLS[12:]  # 3 warm-up calls of each of the 4 callables come first
    assert len(timed_calls) == 24 and all(len(set(timed_calls[i:i + 4])) == 4 for i in range(0, 24, 4))
    assert timed_calls[0] != timed_calls[4]  # the order rotates between repeats
