"""Pretraining end to end on a few generated images: encoder file, TensorBoard terms, resume, loading the
encoder as a detection backbone, continued pretraining of a DINOv2-architecture ViT, and the k-NN command."""
from __future__ import annotations

import json
import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dino_detector.backbones.encoder_file import load_encoder
from dino_detector.data.synthetic import generate_shapes
from dino_detector.runtime.checkpoint import load_checkpoint
from dino_detector.pretrain import main as pretrain_main
from dino_detector.train import main as train_main

SMALL = ["--batch_size", "4", "--global_size", "32", "--local_size", "16", "--n_local", "2", "--out_dim", "64",
         "--head_hidden_dim", "32", "--head_bottleneck_dim", "16", "--device", "cpu", "--num_workers", "0",
         "--log_frequency", "1", "--mask_probability", "1.0", "--mim_weight", "0.5"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    images, ann = generate_shapes(root, "train", 8, seed=0, size_range=(64, 96))
    return images, ann


@pytest.fixture(scope="module")
def pretrained(shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    assert pretrain_main(["--images", str(shapes[0]), "--arch", "flexible-tiny", "--epochs", "2",
                          "--checkpoint_every", "1", "--output_dir", str(out), *SMALL,
                          "--teacher_temp", "0.07"]) == 0  # a warm-up from 0.04 to watch
    return out


def test_pretraining_writes_an_encoder_and_logs_every_term(pretrained):
    assert (pretrained / "encoder_final.pth").is_file() and (pretrained / "pretrain_config.yaml").is_file()
    events = EventAccumulator(str(pretrained / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for term in ("loss", "dino", "ibot", "mim", "koleo", "vicreg", "vicreg_variance", "teacher_temp", "momentum", "lr",
                 "embedding_std", "target_entropy"):
        assert f"pretrain/{term}" in tags, term
    assert len(events.Scalars("pretrain/loss")) == 4  # 8 images, batch 4, 2 epochs
    temps = [e.value for e in events.Scalars("pretrain/teacher_temp")]
    assert temps[0] == pytest.approx(0.04) and temps[-1] > temps[0]  # warm-up from 0.04 towards 0.07
    momenta = [e.value for e in events.Scalars("pretrain/momentum")]
    assert momenta[0] == pytest.approx(0.992) and momenta[-1] > momenta[0]
    ckpt = load_checkpoint(pretrained / "pretrain_last.pth")
    assert ckpt["step"] == 4 and ckpt["epoch"] == 2
    # the curve a user reads: a CSV row per logged step with the same values, and the chart of it
    import csv

    rows = list(csv.DictReader((pretrained / "pretrain_curve.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert [float(r["dino"]) for r in rows] == pytest.approx([e.value for e in events.Scalars("pretrain/dino")],
                                                             rel=1e-4)
    # the teacher's target entropy, the uniform-output monitor: between 0 and ln K
    out_dim = int(SMALL[SMALL.index("--out_dim") + 1])
    assert all(0 < float(r["target_entropy"]) <= math.log(out_dim) + 1e-4 for r in rows)
    from PIL import Image

    with Image.open(pretrained / "pretrain_curves.png") as chart:
        assert chart.width > 600 and chart.height > 300


def test_the_encoder_file_is_the_teachers_encoder_and_a_detection_backbone(pretrained, shapes, tmp_path):
    encoder = load_encoder(pretrained / "encoder_final.pth")
    teacher = load_checkpoint(pretrained / "pretrain_last.pth")["teacher"]
    for name, value in encoder.state_dict().items():
        assert torch.equal(value, teacher[f"encoder.{name}"]), name
    images, ann = shapes
    out = tmp_path / "det"
    assert train_main(["--train_images", str(images), "--train_annotations", str(ann),
                       "--dino_model", str(pretrained / "encoder_final.pth"), "--image_size", "64",
                       "--num_queries", "5", "--decoder_layers", "1", "--device", "cpu", "--num_workers", "0",
                       "--epochs", "1", "--batch_size", "4", "--output_dir", str(out)]) == 0
    # the detector started from the pretrained weights: its first-epoch checkpoint moved away from them only
    # by one epoch of small steps, while a random encoder is far from them
    det = load_checkpoint(out / "dino_detector_final.pth")["model"]
    name = "encoder.layer.0.attention.q_proj.weight"
    start = encoder.state_dict()[name]
    random = load_encoder(pretrained / "encoder_final.pth", weights=False).state_dict()[name]
    assert (det[f"backbone.vit.{name}"] - start).abs().max() < (random - start).abs().max() / 4


def test_resume_continues_from_the_last_pretraining_checkpoint(pretrained, shapes, tmp_path, capsys):
    out = tmp_path / "more"
    assert pretrain_main(["--images", str(shapes[0]), "--arch", "flexible-tiny", "--epochs", "3",
                          "--resume", str(pretrained / "pretrain_last.pth"), "--output_dir", str(out), *SMALL]) == 0
    ckpt = load_checkpoint(out / "pretrain_last.pth")
    assert ckpt["epoch"] == 3 and ckpt["step"] == 6
    # without --mim_weight the checkpoint's pixel head has no place: one line that says so, exit code 2
    assert pretrain_main(["--images", str(shapes[0]), "--arch", "flexible-tiny", "--epochs", "3", "--resume",
                          str(pretrained / "pretrain_last.pth"), "--output_dir", str(tmp_path / "x"),
                          *SMALL[:-2]]) == 2
    err = capsys.readouterr().err
    assert "other head settings" in err and "pixel_head" in err and "Traceback" not in err


def test_continued_pretraining_of_a_dinov2_architecture(shapes, tmp_path):
    out = tmp_path / "dinov2"
    args = [a if a != "32" else "28" for a in SMALL]  # global crops a multiple of the 14-pixel patch
    assert pretrain_main(["--images", str(shapes[0]), "--arch", "tiny", "--epochs", "1", "--output_dir", str(out),
                          *args]) == 0
    vit = load_encoder(out / "encoder_final.pth")
    assert type(vit).__name__ == "Dinov2Model" and vit.config.hidden_size == 192


def test_knn_command_on_bccd(bccd, tmp_path):
    ann = str(bccd["val"])
    code = pretrain_main(["--eval_knn", "--images", str(bccd["images"]), "--annotations", ann,
                          "--val_annotations", ann, "--arch", "flexible-tiny", "--knn_crop_size", "32",
                          "--device", "cpu", "--output_dir", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "knn_metrics.json").read_text())
    assert set(report["per_class_recall"]) == {"Platelets", "RBC", "WBC"}
    assert 0.0 <= report["balanced_accuracy"] <= 1.0 and report["num_train"] == report["num_val"] > 100
    assert "random initialisation" in report["encoder"]


def test_pretraining_runs_under_torchrun_with_two_processes(shapes, tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "dino_detector.pretrain", "--images", str(shapes[0]), "--arch", "flexible-tiny", "--epochs", "1",
           "--output_dir", str(out), *[a if a != "4" else "2" for a in SMALL]]  # batch 2 per process
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(out / "pretrain_last.pth")
    assert ckpt["step"] == 2 and len(ckpt["rng"]) == 2  # 8 images / (2 processes x 2) per step
    assert (out / "encoder_final.pth").is_file()


def test_unlabelled_images_are_found_in_sub_folders(tmp_path):
    """A pretraining folder laid out as train/ val/ (or one folder per source) yields every image in it, as
    the config promises, and each one decodes to views of the asked sizes."""
    from PIL import Image

    from dino_detector.ssl.multicrop import MultiCrop
    from dino_detector.ssl.pretrainer import UnlabeledImages

    for i, sub in enumerate(["train", "val", "val/nested"]):
        (tmp_path / sub).mkdir(parents=True)
        Image.new("RGB", (40, 30), (10 * i, 0, 0)).save(tmp_path / sub / f"img{i}.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    data = UnlabeledImages([str(tmp_path)], MultiCrop(global_size=16, local_size=8, n_local=1))
    assert sorted(p.name for p in data.paths) == ["img0.jpg", "img1.jpg", "img2.jpg"]
    globals_, locals_ = data[2]
    assert [tuple(v.shape) for v in globals_ + locals_] == [(3, 16, 16)] * 2 + [(3, 8, 8)]
