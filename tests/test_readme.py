"""The README's Python API example runs as written (offline, tiny backbone)."""
from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def python_api_example() -> str:
    text = README.read_text()
    section = text.split("## Python API", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert match, "README has no python block under '## Python API'"
    return match.group(1)


def test_readme_python_api_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(python_api_example(), str(README), "exec"), namespace)
    out = namespace["out"]
    assert out["pred_logits"].shape == (2, 20, 3)
    assert out["pred_boxes"].shape == (2, 20, 4)
    dets = namespace["dets"]
    assert dets["boxes"].shape[1] == 4 and len(dets["scores"]) == len(dets["labels"]) > 0
    assert (tmp_path / "outputs" / "api_model" / "model.safetensors").is_file()
    again, model = namespace["again"], namespace["model"]
    model.eval(), again.eval()
    x = torch.rand(1, 3, 64, 80)
    with torch.no_grad():
        assert torch.allclose(model(x)["pred_boxes"], again(x)["pred_boxes"], atol=1e-6)
    assert "torch.Size([2, 20, 3])" in capsys.readouterr().out
    deployed = namespace["deployed_dets"]  # open_detector: onnxruntime, the same Prediction fields
    assert deployed["boxes"].shape[1] == 4 and len(deployed["scores"]) == len(deployed["label_names"]) > 0
    image = torch.rand(3, 120, 160)
    want, got = again.predict(image, threshold=0.0), namespace["deployed"].predict(image, threshold=0.0)
    torch.testing.assert_close(got["scores"], want["scores"], atol=1e-4, rtol=0)


def help_flags(main, capsys) -> set[str]:
    """The flags an entry module's --help lists."""
    try:
        main(["--help"])
    except SystemExit:
        pass
    return set(re.findall(r"--[a-z0-9_]+", capsys.readouterr().out))


def test_every_flag_the_readme_names_exists(capsys):
    from dino_detector import analyze, demo, download, export, info, predict, pretrain, train

    known = set()
    for module in (train, download, info, demo, pretrain, analyze, predict, export):
        known |= help_flags(module.main, capsys)
    from benchmarks import budget_curve, run as bench_run  # the README's benchmark lines

    known |= help_flags(bench_run.main, capsys) | help_flags(budget_curve.main, capsys)
    from torch.distributed.run import get_args_parser  # the README's torchrun lines

    known |= set(get_args_parser()._option_string_actions)
    known.add("--logdir")  # tensorboard's own flag
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_]+", README.read_text()))
    assert named, "the README names no flags?"
    assert named - known == set()


def own_data_blocks() -> tuple[list[str], str]:
    """The commands (continuation lines joined, comments dropped) and the Python example of the README's
    "Train on your own data"."""
    section = README.read_text().split("## Train on your own data", 1)[1].split("\n## ", 1)[0]
    bash = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    commands = [c.strip() for c in bash.replace("\\\n", " ").splitlines() if c.strip() and not c.startswith("#")]
    return commands, re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def roboflow_export(root: Path) -> None:
    """A small Roboflow-style COCO export at ``root`` (train / valid / test): long, flat images with two coloured
    bars each, so that the commands' 384 px and 50 epochs stay short (resized, an image is 384 x 24 pixels)."""
    import json

    from PIL import Image, ImageDraw

    rng = __import__("random").Random(0)
    for folder, n in (("train", 4), ("valid", 2), ("test", 1)):
        (root / folder).mkdir(parents=True)
        coco = {"images": [], "annotations": [], "categories": [
            {"id": 0, "name": "cells", "supercategory": "none"}, {"id": 1, "name": "red", "supercategory": "cells"},
            {"id": 2, "name": "blue", "supercategory": "cells"}]}
        for i in range(n):
            image = Image.new("RGB", (256, 16), (200, 200, 190))
            draw = ImageDraw.Draw(image)
            for category, colour in ((1, (220, 30, 30)), (2, (30, 30, 220))):
                x, w = rng.randrange(0, 200), rng.randrange(20, 50)
                x1 = min(255, x + w)
                draw.rectangle([x, 3, x1, 12], fill=colour)
                coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i + 1,
                                            "category_id": category, "bbox": [x, 3, x1 - x + 1, 10],
                                            "area": (x1 - x + 1) * 10, "iscrowd": 0})
            image.save(root / folder / f"cells_{i:03d}.jpg", quality=95)
            coco["images"].append({"id": i + 1, "file_name": f"cells_{i:03d}.jpg", "width": 256, "height": 16})
        (root / folder / "_annotations.coco.json").write_text(json.dumps(coco))


def test_readme_own_data_commands_and_python_example_run_as_written(tmp_path, monkeypatch, capsys):
    import csv
    import subprocess
    import sys

    monkeypatch.chdir(tmp_path)
    roboflow_export(tmp_path / "datasets" / "cells")
    commands, python = own_data_blocks()
    assert [c.split()[2] for c in commands] == ["dino_detector.train", "dino_detector.analyze",
                                                "dino_detector.predict"]
    printed = []
    for command in commands:
        args = command.split()
        assert args[:2] == [".venv/bin/python", "-m"]
        proc = subprocess.run([sys.executable, *args[1:]], capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-2000:]
        printed.append(proc.stdout)
    assert "dataset datasets/cells: Roboflow COCO export" in printed[0]
    run = tmp_path / "runs" / "cells"
    assert (run / "dino_detector_best.pth").is_file() and (run / "test_metrics_final.json").is_file()
    assert (run / "analysis" / "val_metrics.json").is_file() and (run / "predictions" / "predictions.json").is_file()
    rows = list(csv.DictReader((run / "results.csv").open()))
    evaluations = sorted(run.glob("val_metrics_epoch_*.json")) + [run / "val_metrics_final.json"]
    assert len(rows) == len(evaluations) > 1
    for column in ("epoch", "step", "seconds", "train/loss", "val/loss", "AP", "AP50", "lr/head"):
        assert column in rows[0], column
    namespace: dict = {}
    exec(compile(python, str(README), "exec"), namespace)
    result, detections = namespace["result"], namespace["detections"]
    assert result.weights == Path("runs/cells/dino_detector_best.pth") and 0.0 <= result.metrics["AP"] <= 1.0
    assert set(detections) == {"boxes", "scores", "labels", "label_names"}
    assert "dino_detector_best.pth" in capsys.readouterr().out
