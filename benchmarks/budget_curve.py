"""AP against training budget: ours (the ``two-stage`` CPU recipe) against YOLOv8n trained by Ultralytics' own
trainer, at several wall-clock budgets, on BCCD and on BCCD-WBC, both scored by one pycocotools evaluator.

    .venv/bin/python -m benchmarks.budget_curve --out bench_out/budget --datasets bccd bccd-wbc \\
        --detectors ours yolov8n --minutes 6 12 24 --seeds 1            # the sweep (one run at a time)
    .venv/bin/python -m benchmarks.budget_curve --out bench_out/budget --report   # table + chart only

Every run is its own subprocess (``--single``), started only when its result is not in the output folder yet
(``runs.jsonl``: one JSON line per finished run), so a sweep can be stopped and continued. Each run trains
from random weights on the train split for the budget and predicts the val split; the predictions are scored
here with ``dino_detector.engine.evaluator.coco_evaluate`` (pycocotools), whatever trained them.

- ``ours``: ``dino_detector.train --preset two-stage --image_size 384`` (the README's CPU recipe; the
  preset trains at batch 4, lr 3.5e-4), validated only after the budget (``eval_every 0``);
  ``--set key=value`` adds settings (A/B runs, named by ``--label``).
- ``yolov8n``: ``YOLO("yolov8n.yaml").train(time=...)`` with its default augmentation, 512 px, batch 4, no
  per-epoch validation (``val=False``), predictions of its final EMA weights.

Datasets: ``bccd`` (../shared/datasets/bccd, 3 classes) and ``bccd-wbc`` (the same images with only the WBC
boxes: about one large object per image, one class), whose COCO files are written into the output folder.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

from .peers import BccdData

WBC_CATEGORY = 3  # BCCD's category id of white blood cells
DATASETS = ("bccd", "bccd-wbc")
DETECTORS = ("ours", "yolov8n")
OURS_RECIPE = {"eval_every": 0, "num_queries": 100}  # the preset's query count, not the suite's 50 (BCCD-only)


def dataset(name: str, out: Path) -> BccdData:
    """The train / val files of ``name``; bccd-wbc's are derived from BCCD's (WBC boxes only, every image)."""
    bccd = BccdData()
    if name == "bccd":
        return bccd
    if name != "bccd-wbc":
        raise ValueError(f"dataset must be one of {DATASETS}, got '{name}'")
    folder = out / "bccd-wbc"
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, source in (("train", bccd.train_json), ("val", bccd.val_json)):
        coco = json.loads(Path(source).read_text())
        coco["annotations"] = [a for a in coco["annotations"] if a["category_id"] == WBC_CATEGORY]
        coco["categories"] = [c for c in coco["categories"] if c["id"] == WBC_CATEGORY]
        files[split] = folder / f"instances_{split}.json"
        files[split].write_text(json.dumps(coco))
    return BccdData(images=bccd.images, train_json=files["train"], val_json=files["val"])


def parse_settings(pairs: list[str]) -> dict:
    """``key=value`` pairs -> settings (numbers and true / false read as such, the rest kept as text)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--set takes key=value, got '{pair}'")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


# settings that name the run's data or files rather than its recipe
NOT_RECIPE = {"output_dir", "train_images", "train_annotations", "val_images", "val_annotations", "num_classes",
              "class_names", "category_ids", "seed", "time_budget_min"}


def recipe_settings(config_yaml: Path) -> dict:
    """The recipe a run trained with: every setting of its saved, resolved ``config.yaml`` that differs from
    the package defaults (so a preset's own values are recorded, not only the ``--set`` flags)."""
    from dino_detector.config import Config, build_config

    saved = Config.load(config_yaml).flat()
    defaults = build_config().flat()
    return {k: v for k, v in saved.items() if k not in NOT_RECIPE and defaults.get(k) != v}


def run_key(run: dict) -> tuple:
    return run["dataset"], run["detector"], run["label"], float(run["minutes"]), int(run["seed"])


def train_one(args) -> dict:
    """One budgeted run in this process: train, predict val, score with pycocotools."""
    from dino_detector.data.coco import load_coco
    from dino_detector.engine.evaluator import coco_evaluate

    out = Path(args.out)
    data = dataset(args.dataset, out)
    folder = out / "runs" / f"{args.dataset}_{args.detector}_{args.label}_{args.minutes:g}min_seed{args.seed}"
    started = time.time()
    if args.detector == "ours":
        from .peers import ours
        run = ours.train_for_budget("flexible", data, args.minutes, folder, args.seed,
                                    extra={**OURS_RECIPE, **parse_settings(args.set)})
    else:
        from .peers import yolo_peer
        run = yolo_peer.train_for_budget("yolov8n", data, args.minutes, folder, args.seed, val=False)
    metrics, _ = coco_evaluate(load_coco(str(data.val_json)), run.results)
    resolved = recipe_settings(folder / "config.yaml") if args.detector == "ours" else {}
    return {"dataset": args.dataset, "detector": args.detector, "label": args.label, "minutes": args.minutes,
            "seed": args.seed, "settings": parse_settings(args.set), "resolved": resolved, "steps": run.steps,
            "wall_s": round(time.time() - started, 1), **{k: round(metrics[k], 4) for k in
                                                          ("AP", "AP50", "AP75", "APs", "APm", "APl")},
            "notes": run.notes}


def read_runs(out: Path) -> list[dict]:
    path = out / "runs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def sweep(args) -> None:
    """Every (dataset, budget, detector, seed) not yet in runs.jsonl, one subprocess at a time."""
    if "yolov8n" in args.detectors and importlib.util.find_spec("ultralytics") is None:
        raise SystemExit("budget_curve: the yolov8n runs need ultralytics, from the bench extra: "
                         ".venv/bin/python -m pip install -e '.[bench]'")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done = {run_key(r) for r in read_runs(out)}
    for minutes in args.minutes:
        for seed in args.seeds:
            for name in args.datasets:
                for detector in args.detectors:
                    label = args.label if detector == "ours" else "default"
                    key = (name, detector, label, float(minutes), int(seed))
                    if key in done:
                        continue
                    cmd = [sys.executable, "-m", "benchmarks.budget_curve", "--single", "--out", str(out),
                           "--dataset", name, "--detector", detector, "--minutes", str(minutes), "--seed",
                           str(seed), "--label", label, *(f"--set={s}" for s in args.set if detector == "ours")]
                    print(f"[budget_curve] {name} {detector} ({label}) {minutes} min seed {seed}", flush=True)
                    subprocess.run(cmd, check=True)
    report(out)


def report(out: Path) -> str:
    """BENCHMARKS.md-ready table (mean and every seed per cell) and chart (budget_curve.png) of runs.jsonl."""
    runs = read_runs(out)
    cells: dict[tuple, list[dict]] = {}
    for r in runs:
        cells.setdefault((r["dataset"], r["detector"], r["label"], float(r["minutes"])), []).append(r)
    lines = ["| dataset | detector | label | minutes | seeds | AP (mean) | AP per seed | AP50 | APs / APm / APl | steps |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (name, det, label, minutes), rs in sorted(cells.items()):
        mean = {k: sum(r[k] for r in rs) / len(rs) for k in ("AP", "AP50", "APs", "APm", "APl")}
        per_seed = " / ".join("%.3f" % r["AP"] for r in rs)
        steps = " / ".join(str(r["steps"]) for r in rs)
        lines.append(f"| {name} | {det} | {label} | {minutes:g} | {len(rs)} | {mean['AP']:.3f} | {per_seed} | "
                     f"{mean['AP50']:.3f} | {mean['APs']:.3f} / {mean['APm']:.3f} / {mean['APl']:.3f} | {steps} |")
    table = "\n".join(lines)
    (out / "budget_curve.md").write_text(table + "\n")
    _chart(cells, out / "budget_curve.png")
    print(table)
    return table


def _chart(cells: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({k[0] for k in cells})
    if not names:
        return
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        for det, label in sorted({(k[1], k[2]) for k in cells if k[0] == name}):
            points = sorted((k[3], sum(r["AP"] for r in rs) / len(rs)) for k, rs in cells.items()
                            if k[:3] == (name, det, label))
            ax.plot(*zip(*points), marker="o", label=f"{det} ({label})" if det == "ours" else det)
        ax.set(title=f"{name} val", xlabel="training minutes (2 CPU cores)", ylabel="AP (pycocotools)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output folder (runs.jsonl, runs/, budget_curve.md / .png)")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--detectors", nargs="+", default=list(DETECTORS), choices=DETECTORS)
    p.add_argument("--minutes", nargs="+", type=float, default=[6.0, 12.0, 24.0])
    p.add_argument("--seeds", nargs="+", type=int, default=[1])
    p.add_argument("--label", default="two-stage", help="name of ours' settings in the table (A/B runs)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting for ours")
    p.add_argument("--report", action="store_true", help="only rebuild the table and chart")
    p.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--dataset", choices=DATASETS, help=argparse.SUPPRESS)
    p.add_argument("--detector", choices=DETECTORS, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.report:
        report(Path(args.out))
    elif args.single:
        args.minutes = float(args.minutes[0])
        result = train_one(args)
        with open(Path(args.out) / "runs.jsonl", "a") as f:
            f.write(json.dumps(result) + "\n")
        print(f"[budget_curve] {result['dataset']} {result['detector']} ({result['label']}) "
              f"{result['minutes']:g} min seed {result['seed']}: AP {result['AP']:.3f}", flush=True)
    else:
        sweep(args)


if __name__ == "__main__":
    main()
