"""benchmarks/budget_curve.py without training: settings parsing, the report's table and chart from a
hand-written runs.jsonl, which runs a continued sweep skips, and the error when ultralytics is missing."""
from __future__ import annotations

import json

import pytest

from benchmarks import budget_curve


def _run(dataset: str, detector: str, minutes: float, seed: int, ap: float, steps: int) -> dict:
    return {"dataset": dataset, "detector": detector, "label": "two-stage" if detector == "ours" else "default",
            "minutes": minutes, "seed": seed, "settings": {}, "steps": steps, "wall_s": 60 * minutes, "AP": ap,
            "AP50": ap + 0.25, "AP75": ap, "APs": 0.1, "APm": 0.2, "APl": ap, "notes": ""}


def test_parse_settings_reads_numbers_and_booleans_and_rejects_a_bare_word():
    assert budget_curve.parse_settings(["mosaic_prob=0.5", "ema=true", "preset=two-stage", "dn_queries=100"]) == {
        "mosaic_prob": 0.5, "ema": True, "preset": "two-stage", "dn_queries": 100}
    with pytest.raises(ValueError, match="key=value"):
        budget_curve.parse_settings(["mosaic_prob"])


def test_report_averages_the_seeds_of_a_cell_and_draws_the_chart(tmp_path):
    runs = [_run("bccd", "ours", 12, 1, 0.40, 300), _run("bccd", "ours", 12, 2, 0.50, 310),
            _run("bccd", "yolov8n", 12, 1, 0.30, 700), _run("bccd", "ours", 6, 1, 0.25, 150)]
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    table = budget_curve.report(tmp_path)
    rows = {tuple(cell.strip() for cell in line.split("|")[1:5]): line for line in table.splitlines()[2:]}
    assert len(rows) == 3
    twelve = rows[("bccd", "ours", "two-stage", "12")].split("|")
    assert [c.strip() for c in twelve[5:8]] == ["2", "0.450", "0.400 / 0.500"]  # seeds, mean, per seed
    assert twelve[8].strip() == "0.700" and twelve[10].strip() == "300 / 310"  # AP50 mean, steps per seed
    assert (tmp_path / "budget_curve.md").read_text() == table + "\n"
    assert (tmp_path / "budget_curve.png").stat().st_size > 10_000


def test_a_continued_sweep_starts_only_the_missing_runs(tmp_path, monkeypatch):
    (tmp_path / "runs.jsonl").write_text(json.dumps(_run("bccd", "ours", 6, 1, 0.25, 150)) + "\n")
    started = []
    monkeypatch.setattr(budget_curve.subprocess, "run", lambda cmd, check: started.append(cmd))
    budget_curve.main(["--out", str(tmp_path), "--datasets", "bccd", "--detectors", "ours", "--minutes", "6", "12",
                       "--seeds", "1"])
    assert len(started) == 1
    cmd = started[0]
    assert cmd[cmd.index("--minutes") + 1] == "12.0" and cmd[cmd.index("--detector") + 1] == "ours"


def test_yolov8n_without_ultralytics_is_a_one_line_error(tmp_path, monkeypatch):
    real = budget_curve.importlib.util.find_spec
    monkeypatch.setattr(budget_curve.importlib.util, "find_spec",
                        lambda name, *a: None if name == "ultralytics" else real(name, *a))
    with pytest.raises(SystemExit, match=r"pip install -e '\.\[bench\]'"):
        budget_curve.main(["--out", str(tmp_path), "--detectors", "yolov8n"])
    assert not (tmp_path / "runs.jsonl").exists()


def test_recipe_settings_record_what_the_preset_resolved_not_only_the_flags(tmp_path):
    """A run's record names its preset's own values (MAL here), which ``--set`` alone would leave out."""
    from dino_detector.config import build_config

    path = tmp_path / "config.yaml"
    build_config("two-stage", iou_aware=True, iou_aware_loss="mal", output_dir=str(tmp_path / "run"),
                 seed=3).save(path)
    recipe = budget_curve.recipe_settings(path)
    assert recipe["preset"] == "two-stage"
    assert recipe["dino_model"] == "flexible-tiny" and recipe["hidden_dim"] == 128  # from the preset
    assert recipe["iou_aware"] is True and recipe["iou_aware_loss"] == "mal"
    assert "output_dir" not in recipe and "seed" not in recipe  # where and which run, not the recipe
    assert recipe["batch_size"] == 4 and recipe["lr"] == 3.5e-4  # the preset's CPU batch and lr
    assert "weight_decay" not in recipe and "decoder_layers" not in recipe  # equal to the defaults: not recorded
