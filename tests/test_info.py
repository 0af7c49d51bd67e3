"""`dino_detector.info`: offline backbone table and preset sizes (meta device, no weights)."""
from __future__ import annotations

from dino_detector.info import backbone_rows, detector_counts, main


def test_backbone_table_matches_the_official_sizes():
    rows = {r["name"]: r for r in backbone_rows()}
    small = rows["facebook/dinov2-small"]
    assert (small["hidden"], small["layers"], small["heads"], small["patch"]) == (384, 12, 6, 14)
    assert 21.5e6 < small["params"] < 22.5e6
    assert 85e6 < rows["facebook/dinov2-base"]["params"] < 88e6
    large3 = rows["facebook/dinov3-vitl16-pretrain-lvd1689m"]
    assert (large3["hidden"], large3["patch"], large3["registers"]) == (1024, 16, 4)
    assert 6.5e9 < rows["facebook/dinov3-vit7b16-pretrain-lvd1689m"]["params"] < 7.0e9
    assert rows["tiny"]["hidden"] == 192 and rows["tiny"]["layers"] == 6


def test_lightweight_preset_trains_10_to_20_percent_of_standard():
    light, _ = detector_counts("lightweight", 80)
    standard, total = detector_counts("standard", 80)
    assert 0.10 <= light / standard <= 0.20
    assert standard < total


def test_info_command_prints_the_table_and_preset(capsys):
    assert main(["--preset", "lightweight"]) == 0
    out = capsys.readouterr().out
    assert "facebook/dinov2-giant" in out and "preset lightweight (80 classes)" in out
