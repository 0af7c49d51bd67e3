"""What a run ships: dino_detector_best.pth by validation AP (the EMA weights with --ema), early stopping,
the deployable weights behind predict / export / --only_evaluate (--weights raw|ema to choose), results.csv
and the CPU pace note."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dino_detector.data.synthetic import generate_shapes
from dino_detector.deploy.backends import TorchBackend
from dino_detector.deploy.files import predict_files
from dino_detector.models.detector import ObjectDetector
from dino_detector.runtime.checkpoint import load_checkpoint
from dino_detector.train import main as train_main

RUN = ["--dino_model", "tiny", "--image_size", "64", "--num_queries", "8", "--decoder_layers", "1", "--hidden_dim",
       "32", "--dim_feedforward", "64", "--num_heads", "2", "--batch_size", "4", "--device", "cpu",
       "--num_workers", "0", "--eval_every", "1", "--checkpoint_every", "0", "--score_threshold", "0.05"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("best_shapes")
    train = generate_shapes(root, "train", 16, seed=0, size_range=(64, 80))
    val = generate_shapes(root, "val", 8, seed=0, size_range=(64, 80))
    return ["--train_images", str(train[0]), "--train_annotations", str(train[1]), "--val_images", str(val[0]),
            "--val_annotations", str(val[1])], val[0]


@pytest.fixture(scope="module")
def ema_run(shapes, tmp_path_factory):
    """Three epochs with an EMA that lags the raw weights, evaluated after each."""
    out = tmp_path_factory.mktemp("ema_run")
    assert train_main([*RUN, *shapes[0], "--epochs", "3", "--lr", "1e-3", "--ema", "--ema_decay", "0.5",
                       "--output_dir", str(out)]) == 0
    return out


def test_patience_stops_after_evaluations_without_improvement(shapes, tmp_path):
    out = tmp_path / "patience"
    # lr 0: the weights (and their EMA) never change, so every evaluation after the first is no better
    assert train_main([*RUN, *shapes[0], "--epochs", "10", "--lr", "0", "--ema", "--patience", "2",
                       "--output_dir", str(out)]) == 0
    assert [p.name for p in sorted(out.glob("val_metrics_ema_epoch_*.json"))] == [
        f"val_metrics_ema_epoch_{i}.json" for i in (1, 2, 3)]
    assert load_checkpoint(out / "dino_detector_final.pth")["epoch"] == 2  # stopped after the third epoch
    best = load_checkpoint(out / "dino_detector_best.pth")
    assert best["best"]["epoch"] == 1 and best["deploy"] == "ema"


def test_the_best_checkpoint_ships_the_ema_weights_it_was_chosen_by(ema_run, shapes, tmp_path):
    best = load_checkpoint(ema_run / "dino_detector_best.pth")
    chosen = best["best"]
    recorded = json.loads((ema_run / f"val_metrics_ema_epoch_{chosen['epoch']}.json").read_text()) \
        if (ema_run / f"val_metrics_ema_epoch_{chosen['epoch']}.json").is_file() \
        else json.loads((ema_run / "val_metrics_ema_final.json").read_text())
    assert recorded["AP"] == chosen["value"] and recorded["weights"] == "ema"
    # re-evaluated, the best checkpoint gives exactly the AP recorded for it, from its EMA weights
    for weights, expected in (("auto", ("ema", chosen["value"])), ("ema", ("ema", chosen["value"]))):
        out = tmp_path / weights
        assert train_main(["--only_evaluate", "--checkpoint", str(ema_run / "dino_detector_best.pth"), *shapes[0],
                           "--weights", weights, "--device", "cpu", "--num_workers", "0", "--score_threshold",
                           "0.05", "--output_dir", str(out)]) == 0
        metrics = json.loads((out / "val_metrics_final.json").read_text())
        assert (metrics["weights"], metrics["AP"]) == expected
    raw = tmp_path / "raw"
    assert train_main(["--only_evaluate", "--checkpoint", str(ema_run / "dino_detector_best.pth"), *shapes[0],
                       "--weights", "raw", "--device", "cpu", "--num_workers", "0", "--output_dir", str(raw)]) == 0
    assert json.loads((raw / "val_metrics_final.json").read_text())["weights"] == "raw"
    ema_state = ObjectDetector.from_checkpoint(ema_run / "dino_detector_best.pth").state_dict()
    raw_state = ObjectDetector.from_checkpoint(ema_run / "dino_detector_best.pth", weights="raw").state_dict()
    assert any(not torch.equal(ema_state[k], raw_state[k]) for k in ema_state)  # two different sets


def test_predict_and_onnx_export_use_the_deployable_weights(ema_run, shapes, tmp_path):
    from dino_detector.export import main as export_main
    from dino_detector.predict import main as predict_main

    best, final = ema_run / "dino_detector_best.pth", ema_run / "dino_detector_final.pth"
    images = sorted(shapes[1].glob("*.jpg"))[:3]
    assert predict_main(["--checkpoint", str(best), "--images", *map(str, images), "--threshold", "0.0",
                         "--device", "cpu", "--num_workers", "0", "--no_draw", "--output_dir", str(tmp_path)]) == 0
    predicted = json.loads((tmp_path / "predictions.json").read_text())

    def direct(path: Path, weights: str):
        backend = TorchBackend(ObjectDetector.from_checkpoint(path, weights=weights), torch.device("cpu"))
        run = predict_files(backend, images, threshold=0.0, progress=False)
        return [(round(s, 5), [round(v, 2) for v in (b[0], b[1], b[2] - b[0], b[3] - b[1])])
                for p in run.predictions for s, b in zip(p.scores, p.boxes)]
    got = [(p["score"], p["bbox"]) for p in predicted]
    assert got == direct(best, "ema")
    assert got != direct(final, "raw")
    onnx_file = tmp_path / "best.onnx"
    assert export_main(["--checkpoint", str(best), "--output", str(onnx_file), "--height", "64", "--width", "48"]) == 0
    import onnxruntime as ort

    x = torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(0))  # the export example: batch 2
    (logits, boxes) = ort.InferenceSession(str(onnx_file)).run(None, {"images": x.numpy()})
    with torch.no_grad():
        ema = ObjectDetector.from_checkpoint(best).eval()(x)
        raw = ObjectDetector.from_checkpoint(final, weights="raw").eval()(x)
    assert np.abs(logits - ema["pred_logits"].numpy()).max() < 1e-4
    assert np.abs(logits - raw["pred_logits"].numpy()).max() > 1e-3


def test_results_csv_has_a_row_per_evaluation(ema_run):
    rows = list(csv.DictReader((ema_run / "results.csv").open()))
    assert [(r["epoch"], r["weights"]) for r in rows] == [(e, w) for e in ("1", "2", "3") for w in ("raw", "ema")]
    columns = set(rows[0])
    for column in ("epoch", "step", "seconds", "weights", "train/loss", "train/loss_ce", "val/loss", "AP", "AP50",
                   "AP75", "lr/head", "lr/backbone"):
        assert column in columns, column
    assert float(rows[-1]["step"]) == 12 and float(rows[0]["lr/head"]) == pytest.approx(1e-3)
    finals = json.loads((ema_run / "val_metrics_ema_final.json").read_text())
    assert float(rows[-1]["AP"]) == pytest.approx(finals["AP"], abs=1e-6)


def test_a_cpu_run_says_what_an_epoch_takes_and_names_the_cpu_recipe(shapes, tmp_path, capsys):
    assert train_main([*RUN, *shapes[0], "--epochs", "1", "--output_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "on this CPU a step takes" in out and "one epoch of 4 steps takes about" in out
    assert "--preset two-stage --image_size 384" in out
