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
    from benchmarks import run as bench_run  # the README's benchmark suite line

    known |= help_flags(bench_run.main, capsys)
    from torch.distributed.run import get_args_parser  # the README's torchrun lines

    known |= set(get_args_parser()._option_string_actions)
    known.add("--logdir")  # tensorboard's own flag
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_]+", README.read_text()))
    assert named, "the README names no flags?"
    assert named - known == set()
