"""End to end on real data, kept tiny: train, evaluate, re-evaluate from the checkpoint, resume exactly."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from pycocotools.coco import COCO

from dino_detector.train import main as train_main

METRIC_KEYS = {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "per_class", "precision",
               "recall", "f1", "mean_iou", "accuracy", "mAP50", "num_images", "epoch"}


def data_args(tiny_coco) -> list[str]:
    images, ann = str(tiny_coco["images"]), str(tiny_coco["annotations"])
    return ["--train_images", images, "--train_annotations", ann, "--val_images", images, "--val_annotations", ann]


def model_args() -> list[str]:
    return ["--dino_model", "tiny", "--no_pretrained", "--image_size", "96", "--batch_size", "4",
            "--num_queries", "10", "--decoder_layers", "1", "--device", "cpu", "--num_workers", "0"]


def train(tiny_coco, out: Path, *extra: str) -> int:
    return train_main([*data_args(tiny_coco), *model_args(), "--output_dir", str(out), *extra])


@pytest.fixture(scope="module")
def one_epoch_run(tiny_coco, tmp_path_factory):
    """1 epoch on tiny-coco (validated on the same files), with an epoch checkpoint to resume from."""
    out = tmp_path_factory.mktemp("one_epoch")
    code = train(tiny_coco, out, "--epochs", "1", "--checkpoint_every", "1", "--hflip_prob", "0.5")
    return code, out


def load_json(path: Path):
    return json.loads(path.read_text())


def test_training_writes_config_checkpoint_metrics_and_predictions(one_epoch_run, tiny_coco):
    code, out = one_epoch_run
    assert code == 0
    for name in ("config.yaml", "dino_detector_final.pth", "dino_detector_epoch_1.pth", "val_metrics_final.json",
                 "val_predictions_final.json"):
        assert (out / name).is_file(), name

    metrics = load_json(out / "val_metrics_final.json")
    assert METRIC_KEYS <= set(metrics)
    assert metrics["num_images"] == 16
    assert metrics["epoch"] == 1
    assert metrics["mAP50"] == metrics["AP50"]
    assert len(metrics["per_class"]) == 80
    for key in ("AP", "AP50", "AP75", "precision", "recall", "f1", "mean_iou", "accuracy"):
        assert 0.0 <= metrics[key] <= 1.0, key

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tiny_coco["annotations"]))
        dt = gt.loadRes(str(out / "val_predictions_final.json"))
    predictions = load_json(out / "val_predictions_final.json")
    assert len(dt.anns) == len(predictions) > 0
    assert {p["image_id"] for p in predictions} <= set(gt.getImgIds())
    assert {p["category_id"] for p in predictions} <= set(gt.getCatIds())  # dataset ids, not labels 0..79
    assert max(p["category_id"] for p in predictions) > 80  # sparse COCO ids survive the round trip
    assert all(0.0 <= p["score"] <= 1.0 for p in predictions)

    ckpt = torch.load(out / "dino_detector_final.pth", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0  # 0-based index of the last finished epoch
    assert ckpt["metadata"]["category_ids"] == sorted(gt.getCatIds())
    assert ckpt["metadata"]["model"]["num_classes"] == 80
    assert ckpt["step"] == 4  # 16 images / batch 4

    from dino_detector.config import Config
    cfg = Config.load(out / "config.yaml")
    assert cfg.model.dino_model == "tiny" and cfg.model.pretrained is False
    assert cfg.data.image_size == 96 and cfg.train.epochs == 1


def test_only_evaluate_from_the_checkpoint_reproduces_the_metrics(one_epoch_run, tiny_coco, tmp_path):
    code, out = one_epoch_run
    assert code == 0
    images, ann = str(tiny_coco["images"]), str(tiny_coco["annotations"])
    code = train_main(["--only_evaluate", "--checkpoint", str(out / "dino_detector_final.pth"),
                       "--val_images", images, "--val_annotations", ann, "--image_size", "96",
                       "--batch_size", "4", "--device", "cpu", "--num_workers", "0", "--output_dir", str(tmp_path)])
    assert code == 0

    first = load_json(out / "val_metrics_final.json")
    again = load_json(tmp_path / "val_metrics_final.json")
    assert again["epoch"] is None and again["step"] == 0 and again["train_seconds"] == 0  # nothing trained here
    for key in ("epoch", "step", "train_seconds"):
        first.pop(key), again.pop(key)
    assert again == first

    def key(p):
        return p["image_id"], p["category_id"], tuple(p["bbox"]), p["score"]
    assert sorted(map(key, load_json(tmp_path / "val_predictions_final.json"))) == \
        sorted(map(key, load_json(out / "val_predictions_final.json")))


def test_resume_gives_the_same_model_as_training_straight_through(one_epoch_run, tiny_coco, tmp_path):
    code, first = one_epoch_run
    assert code == 0
    common = ["--epochs", "2", "--checkpoint_every", "1", "--hflip_prob", "0.5"]
    assert train(tiny_coco, tmp_path / "straight", *common) == 0
    assert train(tiny_coco, tmp_path / "resumed", *common,
                 "--checkpoint", str(first / "dino_detector_epoch_1.pth")) == 0

    straight = torch.load(tmp_path / "straight" / "dino_detector_final.pth", map_location="cpu", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "dino_detector_final.pth", map_location="cpu", weights_only=True)
    after_one = torch.load(first / "dino_detector_epoch_1.pth", map_location="cpu", weights_only=True)

    assert straight["model"].keys() == resumed["model"].keys()
    for name, value in straight["model"].items():
        assert torch.allclose(value, resumed["model"][name], atol=1e-6, rtol=0), name
    assert resumed["epoch"] == straight["epoch"] == 1
    assert resumed["step"] == straight["step"] == 8
    # the epoch-1 state of both runs is the same, and the second epoch really changed the weights
    straight_one = torch.load(tmp_path / "straight" / "dino_detector_epoch_1.pth", map_location="cpu",
                              weights_only=True)
    for name, value in after_one["model"].items():
        assert torch.allclose(value, straight_one["model"][name], atol=1e-6, rtol=0), name
    changed = max((after_one["model"][n].float() - v.float()).abs().max().item()
                  for n, v in resumed["model"].items() if v.is_floating_point())
    assert changed > 1e-5
    # the loss history carries over and matches
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    for h_straight, h_resumed in zip(straight["history"], resumed["history"]):
        assert h_resumed["loss"] == pytest.approx(h_straight["loss"], rel=1e-5)


def test_testdev_images_without_annotations_give_coco_results(one_epoch_run, tiny_coco, tmp_path):
    code, out = one_epoch_run
    assert code == 0
    common = ["--only_evaluate", "--checkpoint", str(out / "dino_detector_final.pth"), "--testdev_images",
              str(tiny_coco["images"]), "--device", "cpu", "--num_workers", "0", "--batch_size", "4"]
    assert train_main([*common, "--test_mini", "--test_mini_size", "3", "--output_dir", str(tmp_path / "a")]) == 0
    mini = load_json(tmp_path / "a" / "testdev_predictions_final.json")
    stems = sorted(int(p.stem) for p in Path(tiny_coco["images"]).glob("*.jpg"))
    assert {p["image_id"] for p in mini} <= set(stems[:3]) and len({p["image_id"] for p in mini}) == 3
    assert all(set(p) == {"image_id", "category_id", "bbox", "score"} for p in mini)
    assert train_main([*common, "--output_dir", str(tmp_path / "b")]) == 0  # no --test_mini: every image
    assert {p["image_id"] for p in load_json(tmp_path / "b" / "testdev_predictions_final.json")} == set(stems)
    assert not (tmp_path / "a" / "val_metrics_final.json").exists()  # nothing to evaluate against


def test_checkpoint_of_another_architecture_exits_with_code_2(one_epoch_run, tiny_coco, tmp_path, capsys):
    code, out = one_epoch_run
    assert code == 0
    code = train(tiny_coco, tmp_path, "--epochs", "1", "--hidden_dim", "128",
                 "--checkpoint", str(out / "dino_detector_final.pth"))
    assert code == 2
    err = capsys.readouterr().err
    assert "does not fit" in err and "hidden_dim: checkpoint 256, now 128" in err
    assert "different settings (1)" in err  # only the setting that differs is listed
    assert "encoder.layers.0.attn.value_proj.weight: checkpoint (256, 256), model (128, 128)" in err
    assert "Traceback" not in err


def test_missing_checkpoint_and_missing_data_exit_with_code_2(tiny_coco, tmp_path, capsys):
    code = train(tiny_coco, tmp_path / "a", "--epochs", "1", "--checkpoint", str(tmp_path / "nope.pth"))
    assert code == 2
    assert "nope.pth" in capsys.readouterr().err
    code = train_main(["--dino_model", "tiny", "--no_pretrained", "--output_dir", str(tmp_path / "b"),
                       "--train_images", str(tmp_path), "--train_annotations", str(tmp_path / "none.json")])
    assert code == 2
    assert "none.json" in capsys.readouterr().err


def test_only_evaluate_applies_a_soft_nms_sigma_given_on_the_command_line(one_epoch_run, tiny_coco, tmp_path):
    """Post-processing settings given with --only_evaluate score the checkpoint's weights with them; the rest
    of the model comes from the checkpoint (its sigma, 0, when none is given)."""
    from dino_detector.config import Config

    code, out = one_epoch_run
    assert code == 0
    common = ["--only_evaluate", "--checkpoint", str(out / "dino_detector_final.pth"), "--val_images",
              str(tiny_coco["images"]), "--val_annotations", str(tiny_coco["annotations"]), "--image_size", "96",
              "--batch_size", "4", "--device", "cpu", "--num_workers", "0"]
    scores = {}
    for sigma in (None, 0.5):
        folder = tmp_path / f"sigma_{sigma}"
        flags = [] if sigma is None else ["--soft_nms_sigma", str(sigma)]
        assert train_main([*common, *flags, "--output_dir", str(folder)]) == 0
        assert Config.load(folder / "config.yaml").model.soft_nms_sigma == (sigma or 0.0)
        scores[sigma] = sorted(p["score"] for p in load_json(folder / "val_predictions_final.json"))
    assert scores[None] == sorted(p["score"] for p in load_json(out / "val_predictions_final.json"))
    assert len(scores[0.5]) == len(scores[None])  # decayed, not dropped
    assert sum(scores[0.5]) < sum(scores[None]) - 1e-3  # near-duplicates' scores decayed
