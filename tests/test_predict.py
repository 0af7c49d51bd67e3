"""``predict`` on the BCCD image folder: predictions.json that pycocotools loadRes accepts, drawn pictures,
the speed summary; a corrupt file and a non-image in a (nested) folder are reported and skipped."""
from __future__ import annotations

import contextlib
import io
import json
import shutil

import pytest
from PIL import Image
from pycocotools.coco import COCO

from dino_detector.predict import main as predict_main


def test_predict_on_the_bccd_folder(bccd, trained_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert predict_main(["--checkpoint", str(trained_checkpoint), "--images", str(bccd["images"]),
                         "--output_dir", str(out), "--threshold", "0.2", "--batch_size", "8",
                         "--device", "cpu", "--num_workers", "0"]) == 0
    printed = capsys.readouterr().out
    n_files = len(list(bccd["images"].glob("*.jpg")))
    assert f"{n_files} images" in printed and "images/s on cpu" in printed and "0 unreadable" in printed
    results = json.loads((out / "predictions.json").read_text())
    assert results and all(r["score"] > 0.2 for r in results)
    assert {r["category_name"] for r in results} <= {"Platelets", "RBC", "WBC"}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(out / "images.json"))
        dt = gt.loadRes(str(out / "predictions.json"))  # pycocotools accepts the file as written
    assert len(gt.getImgIds()) == n_files and len(dt.getAnnIds()) == len(results)
    first = results[0]
    assert gt.imgs[first["image_id"]]["file_name"] == first["file_name"]
    drawn = sorted((out / "drawn").glob("*.jpg"))
    assert len(drawn) == n_files
    with Image.open(drawn[0]) as im:
        im.verify()


def test_corrupt_files_are_reported_and_skipped(bccd, trained_checkpoint, tmp_path, capsys):
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    names = sorted(p.name for p in bccd["images"].glob("*.jpg"))[:3]
    shutil.copy(bccd["images"] / names[0], folder / names[0])
    shutil.copy(bccd["images"] / names[1], folder / "nested" / names[1])  # folders are searched recursively
    truncated = (bccd["images"] / names[2]).read_bytes()
    (folder / "broken.jpg").write_bytes(truncated[: len(truncated) // 3])  # header fine, body cut
    (folder / "notes.png").write_text("not an image")
    (folder / "readme.txt").write_text("ignored: not an image suffix")
    out = tmp_path / "out"
    assert predict_main(["--checkpoint", str(trained_checkpoint), "--images", str(folder), "--output_dir",
                         str(out), "--threshold", "0.0", "--device", "cpu", "--num_workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "2 images" in printed and "2 unreadable file(s) skipped" in printed
    assert "notes.png: not an image" in printed and "broken.jpg" in printed
    files = {r["file_name"].split("/")[-1] for r in json.loads((out / "predictions.json").read_text())}
    assert files == {names[0], names[1]}


def test_annotation_ids_are_used_when_given(bccd, trained_checkpoint, tmp_path):
    out = tmp_path / "out"
    assert predict_main(["--checkpoint", str(trained_checkpoint), "--images", str(bccd["images"]),
                         "--annotations", str(bccd["val"]), "--output_dir", str(out), "--threshold", "0.0",
                         "--device", "cpu", "--num_workers", "0", "--no_draw"]) == 0
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(bccd["val"]))
    results = json.loads((out / "predictions.json").read_text())
    assert {r["image_id"] for r in results} == set(gt.getImgIds())  # only the annotated images, by their ids
    for r in results[:50]:
        assert gt.imgs[r["image_id"]]["file_name"] == r["file_name"].split("/")[-1]
    assert not (out / "drawn").exists()


def test_missing_input_is_a_clear_error(trained_checkpoint, tmp_path, capsys):
    assert predict_main(["--checkpoint", str(trained_checkpoint), "--images", str(tmp_path / "nowhere")]) == 2
    assert "image folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert predict_main(["--checkpoint", str(trained_checkpoint), "--images", str(tmp_path / "empty")]) == 2
    assert "no image files found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        predict_main(["--images", str(tmp_path)])  # --checkpoint is required


def test_compiled_model_with_frozen_weights_equals_eager(make_detector):
    """``prepare_model(compile_model=True)`` (``predict --compile``): torch.compile with frozen weights gives
    the eager detections. (A second input size recompiles with dynamic shapes; checked by hand, 4 minutes of
    compilation on 2 cores, too slow for CI.)"""
    import torch

    from conftest import perturb_head_
    from dino_detector.engine.inference import prepare_model

    model = make_detector()
    perturb_head_(model)
    model.eval()
    images = torch.rand(2, 3, 84, 140)
    with torch.inference_mode():
        want = model(images)
        got = prepare_model(model, torch.device("cpu"), compile_model=True)(images)
    for key in ("pred_logits", "pred_boxes"):
        assert got[key].shape == want[key].shape
        assert torch.allclose(got[key], want[key], atol=1e-4), (key, (got[key] - want[key]).abs().max())
