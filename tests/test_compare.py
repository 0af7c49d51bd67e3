"""``analyze --compare``: two results files against one annotation file, same evaluator, table + chart."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from dino_detector.analyze import main as analyze_main


@pytest.fixture(scope="module")
def results(bccd, tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    gt = json.loads(bccd["val"].read_text())
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
               for a in gt["annotations"] if not a.get("iscrowd", 0)]
    # a worse detector: every box shifted right by 40 % of its width, and every second box missing
    shifted = [{**r, "bbox": [r["bbox"][0] + 0.4 * r["bbox"][2], *r["bbox"][1:]], "score": 0.9}
               for r in perfect[::2]]
    paths = root / "ours.json", root / "yolo.json"
    paths[0].write_text(json.dumps(perfect))
    paths[1].write_text(json.dumps(shifted))
    return paths


def test_compare_prints_and_saves_the_table_and_chart(bccd, results, tmp_path, capsys):
    code = analyze_main(["--compare", *map(str, results), "--labels", "ours", "yolo", "--annotations",
                         str(bccd["val"]), "--output_dir", str(tmp_path)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| ours |" in printed and "| yolo |" in printed
    rows = {r["label"]: r for r in json.loads((tmp_path / "comparison.json").read_text())}
    assert rows["ours"]["AP"] == pytest.approx(1.0) and rows["ours"]["recall"] == pytest.approx(1.0)
    assert rows["yolo"]["AP50"] < 0.6 and rows["yolo"]["recall"] < 0.5  # half the boxes, and those off target
    table = (tmp_path / "comparison.md").read_text()
    assert "**1.000**" in table  # the best AP is marked
    with Image.open(tmp_path / "comparison.png") as im:
        im.verify()
    with Image.open(tmp_path / "comparison.png") as im:
        assert im.size[0] >= 900 and im.size[1] >= 500
    report = (tmp_path / "report.md").read_text()
    assert "| ours | 1.000 |" in report and "](comparison.png)" in report
    assert (tmp_path / "report.html").read_text().count("src='data:image/png;base64,") == 1


def test_compare_rejects_bad_files_with_a_message(bccd, results, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"not": "a list"}))
    assert analyze_main(["--compare", str(bad), "--annotations", str(bccd["val"]),
                         "--output_dir", str(tmp_path)]) == 2
    assert "not a COCO results list" in capsys.readouterr().err
    wrong_ids = tmp_path / "ids.json"
    wrong_ids.write_text(json.dumps([{"image_id": 0, "category_id": 77, "bbox": [0, 0, 5, 5], "score": 0.5}]))
    assert analyze_main(["--compare", str(wrong_ids), "--annotations", str(bccd["val"]),
                         "--output_dir", str(tmp_path)]) == 2
    assert "category ids [77]" in capsys.readouterr().err
    assert analyze_main(["--compare", *map(str, results), "--labels", "only_one", "--annotations",
                         str(bccd["val"]), "--output_dir", str(tmp_path)]) == 2
