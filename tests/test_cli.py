"""The command line explains itself: every flag of every command has a description, its default and, for a
choice field, the allowed values in --help; a bad value, type or YAML key stops at once with exit code 2
and one line that names it."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from dino_detector import analyze, demo, download, export, info, predict, pretrain, train
from dino_detector.config import Config, PretrainConfig, Settings
from dino_detector.config.describe import describe, field_comments

COMMANDS = {  # entry module -> the settings class its flags come from
    "train": (train, Config), "demo": (demo, Config), "pretrain": (pretrain, PretrainConfig),
    "predict": (predict, predict.PredictSettings), "export": (export, export.ExportSettings),
    "analyze": (analyze, analyze.AnalyzeSettings), "download": (download, download.DownloadSettings),
    "info": (info, info.InfoSettings),
}
FAST_S = 3.0  # a bad command line must be answered before any model or data is loaded


def help_text(module, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def flag_entries(text: str) -> dict[str, str]:
    """Flag name -> its whole --help entry (option strings and help, wrapped lines joined); the first one, since
    an epilog may show example lines that start with a flag too."""
    entries: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        start = re.match(r"^  (?:-\w, )?--(\w+)", line)
        if start and start.group(1) in entries:
            current = None
        elif start:
            current = start.group(1)
            entries[current] = line
        elif current and line.startswith("   ") and line.strip():
            entries[current] += " " + line.strip()
        else:
            current = None
    return {k: " ".join(v.split()) for k, v in entries.items()}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_setting_has_a_description(command):
    _, settings = COMMANDS[command]
    fields = describe(settings)
    assert fields
    missing = [f.name for f in fields if len(f.description.split()) < 2]
    assert missing == [], f"{command}: fields without a description comment: {missing}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_shows_description_default_and_choices_of_every_flag(command, capsys):
    module, settings = COMMANDS[command]
    entries = flag_entries(help_text(module, capsys))
    for f in describe(settings):
        if not f.flag:
            continue
        entry = entries.get(f.name)
        assert entry is not None, f"{command} --help does not list --{f.name}"
        assert " ".join(f.description.split()) in entry, f"--{f.name}: description missing in {entry!r}"
        assert "[default: " in entry or (f.required and "(required)" in entry), f"--{f.name}: no default"
        for choice in f.kind.choices or ():
            assert str(choice) in entry.split("[default:")[0], f"--{f.name}: choice {choice} not shown"
        if f.kind.base is bool and not f.kind.is_list:
            assert f"--no_{f.name}" in entry


def test_train_help_groups_flags_by_section_and_shows_the_preset_defaults(capsys):
    text = help_text(train, capsys)
    for section in Config.sections():
        assert re.search(rf"^{section}: .+:$", text, flags=re.M), f"no --help group for the {section} section"
    with pytest.raises(SystemExit):
        train.main(["--preset", "two-stage", "--help"])
    preset_help = flag_entries(capsys.readouterr().out)
    assert "[default: flexible-tiny from the preset]" in preset_help["dino_model"]
    assert "[default: 128 from the preset]" in preset_help["hidden_dim"]


@dataclass(frozen=True)
class Example(Settings):
    # a field without a comment on its line
    # takes the block above it
    above: int = 1
    # not this block
    inline: str = "#"  # the comment on its line wins (a '#' in a value is not a comment)
    bare: float = 0.5


def test_field_comments_are_read_from_the_source():
    comments = field_comments(type(Config().train))
    assert comments["lr_schedule"].startswith("step: drop by lr_drop_factor")
    assert field_comments(Example) == {"above": "a field without a comment on its line takes the block above it",
                                       "inline": "the comment on its line wins (a '#' in a value is not a comment)",
                                       "bare": ""}


def run_command(args: list[str], tmp_path) -> tuple[int, str, float]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=tmp_path,
                          timeout=60)
    return proc.returncode, proc.stderr, time.perf_counter() - started


BAD_COMMAND_LINES = [
    (["dino_detector.train", "--attention", "deformible"], ["--attention", "deformable", "standard"]),
    (["dino_detector.train", "--lr_schedule", "cosin"], ["--lr_schedule", "step", "cosine"]),
    (["dino_detector.train", "--batch_size", "x"], ["--batch_size", "integer"]),
    (["dino_detector.train", "--preset", "tow-stage"], ["--preset", "two-stage"]),
    (["dino_detector.train", "--lrr", "3"], ["--lrr", "--lr"]),
    (["dino_detector.pretrain", "--centering", "sinkorn"], ["--centering", "centering", "sinkhorn"]),
    (["dino_detector.predict", "--checkpoint", "x.pth", "--images", "a", "--device", "gpu"],
     ["--device", "auto", "cpu", "cuda"]),
    (["dino_detector.predict", "--images", "a"], ["--checkpoint", "required"]),
    (["dino_detector.export", "--checkpoint", "x.pth", "--format", "tflite"], ["--format", "onnx", "pretrained"]),
    (["dino_detector.analyze", "--data_format", "kitti"], ["--data_format", "voc", "yolo"]),
]


@pytest.mark.parametrize("args,named", BAD_COMMAND_LINES, ids=[" ".join(a[1:]) for a, _ in BAD_COMMAND_LINES])
def test_a_bad_flag_value_exits_2_at_once_with_one_line(args, named, tmp_path):
    code, stderr, seconds = run_command(args, tmp_path)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for word in named:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    assert seconds < FAST_S, f"{seconds:.1f} s: the error came after heavy imports"


@pytest.mark.parametrize("yaml_text,named", [
    ("bath_size: 8\n", ["bath_size", "batch_size"]),
    ("train:\n  lr_shedule: cosine\n", ["train.lr_shedule", "lr_schedule"]),
    ("attention: deformible\n", ["attention", "deformable", "standard"]),
    ("epochs: many\n", ["epochs", "integer"]),
])
def test_a_bad_yaml_file_exits_2_at_once_naming_the_key(yaml_text, named, tmp_path):
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml_text)
    code, stderr, seconds = run_command(["dino_detector.train", "--config", str(settings)], tmp_path)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and str(settings) in lines[0], stderr
    for word in named:
        assert word in lines[0]
    assert seconds < FAST_S


def test_the_command_line_imports_no_torch_before_parsing():
    """What keeps errors fast: parsing a training command line loads neither torch nor transformers."""
    code = ("import sys; from dino_detector.cli import parse_config; parse_config(['--lr', '1e-3'], 'x'); "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
