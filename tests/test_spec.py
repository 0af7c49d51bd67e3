"""The resolved run specification: resolved once, the same whichever way a setting was written, one rule for
"random or pretrained weights", and one spec behind config.yaml, the checkpoint and save_pretrained."""
from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
import yaml

from dino_detector.backbones.encoder_file import save_encoder
from dino_detector.backbones.flexible import FlexibleEncoder
from dino_detector.cli import parse_config
from dino_detector.config import Config, build_config
from dino_detector.data.synthetic import generate_shapes
from dino_detector.engine.trainer import Trainer
from dino_detector.models.detector import ObjectDetector
from dino_detector.runtime.checkpoint import load_checkpoint
from dino_detector.spec import plan_run, resolve_run

CLASSES = ([1, 2, 3], ["circle", "square", "triangle"])
RECIPE = ["--preset", "two-stage", "--batch_size", "8", "--image_size", "384", "--lr", "5e-4"]
TINY_RUN = ["--dino_model", "tiny", "--image_size", "64", "--batch_size", "4", "--num_queries", "5",
            "--decoder_layers", "1", "--hidden_dim", "32", "--dim_feedforward", "64", "--num_heads", "2",
            "--device", "cpu", "--num_workers", "0", "--epochs", "1", "--eval_every", "0"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("spec_shapes")
    images, ann = generate_shapes(root, "train", 8, seed=0, size_range=(64, 80))
    return ["--train_images", str(images), "--train_annotations", str(ann), "--val_images", str(images),
            "--val_annotations", str(ann)]


def spec_of(argv: list[str]):
    return resolve_run(parse_config(argv, "test")[0], classes=CLASSES)


def test_the_cpu_recipe_resolves_the_same_with_or_without_no_pretrained():
    typed, explicit = spec_of(RECIPE), spec_of([*RECIPE, "--no_pretrained"])
    assert typed == explicit
    assert typed.to_dict() == explicit.to_dict()
    m = typed.model
    assert (m.backbone_weights, m.pretrained, m.backbone_mode) == ("random", False, "full")
    assert typed.train.lr_backbone == 5e-4  # random weights learn at the head's rate


@pytest.mark.parametrize("no_pretrained", [False, True])
def test_the_flexible_encoder_group_trains_at_the_head_lr(shapes, tmp_path, no_pretrained):
    argv = [*RECIPE, *shapes, "--image_size", "64", "--num_queries", "5", "--device", "cpu", "--num_workers", "0",
            "--output_dir", str(tmp_path)] + (["--no_pretrained"] if no_pretrained else [])
    trainer = Trainer(parse_config(argv, "test")[0])
    groups = {g["name"]: g for g in trainer.state.optimizer.param_groups}
    assert set(groups) == {"head", "backbone"}
    assert groups["backbone"]["base_lr"] == groups["head"]["base_lr"] == 5e-4
    backbone = {id(p) for p in trainer.model.backbone.parameters() if p.requires_grad}
    assert {id(p) for p in groups["backbone"]["params"]} == backbone  # the flexible encoder's weights


def test_published_pretrained_weights_get_a_tenth_of_the_lr_and_lora():
    spec = resolve_run(build_config("standard", dino_model="facebook/dinov2-small", lr=2e-4), classes=CLASSES)
    assert (spec.model.backbone_weights, spec.model.backbone_mode) == ("hub", "lora")
    assert spec.train.lr_backbone == pytest.approx(2e-5)
    own = resolve_run(build_config("standard", dino_model="facebook/dinov2-small", lr=2e-4, lr_backbone=3e-5),
                      classes=CLASSES)
    assert own.train.lr_backbone == 3e-5  # a given backbone lr wins


def test_resolution_is_idempotent_and_fills_every_rule():
    spec = spec_of(["--preset", "lightweight", "--no_pretrained", "--unfreeze_at_epoch", "2", "--epochs", "9"])
    assert resolve_run(spec, classes=CLASSES) == spec
    m, t = spec.model, spec.train
    assert (m.backbone_mode, m.backbone_attention, m.backbone_patch_size) == ("frozen", "windowed", 16)
    assert (m.num_classes, m.category_ids, m.class_names) == (3, *CLASSES)
    assert (t.lr_backbone, t.unfreeze_lr, t.lr_drop_epoch) == (t.lr, t.lr, 7)  # ceil(9 x 0.67)


def test_a_yaml_preset_key_applies_the_preset(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text("preset: two-stage\nlr: 5.0e-4\n")
    cfg = parse_config(["--config", str(path)], "test")[0]
    assert cfg.preset == "two-stage" and cfg.model.dino_model == "flexible-tiny" and cfg.model.two_stage
    assert cfg.train.lr == 5e-4
    flag_wins = parse_config(["--config", str(path), "--preset", "lightweight"], "test")[0]
    assert flag_wins.preset == "lightweight" and flag_wins.model.dino_model == "facebook/dinov2-small"


def test_debug_mode_is_explicit_and_says_what_it_overrides(caplog):
    with caplog.at_level(logging.WARNING):
        spec = spec_of(["--debug", "--epochs", "5", "--debug_epochs", "12"])
    assert (spec.train.epochs, spec.train.lr, spec.train.eval_every) == (12, 5e-4, 10)
    assert "--debug sets epochs to 12 (your settings gave 5)" in caplog.text
    assert "lr" not in caplog.text  # lr was not given: nothing of yours was overridden


def test_classes_the_settings_give_must_match_the_data():
    with pytest.raises(ValueError, match="num_classes is 80 in the settings, but the training annotations have 3"):
        spec_of(["--num_classes", "80"])
    assert spec_of(["--num_classes", "3"]).model.num_classes == 3
    with pytest.raises(ValueError, match="training needs --train_images"):
        resolve_run(Config())


def test_config_yaml_checkpoint_and_pretrained_folder_hold_one_spec(shapes, tmp_path):
    from dino_detector.export import main as export_main
    from dino_detector.train import main as train_main

    out = tmp_path / "run"
    assert train_main([*TINY_RUN, *shapes, "--output_dir", str(out)]) == 0
    run_spec = plan_run(parse_config([*TINY_RUN, *shapes, "--output_dir", str(out)], "test")[0]).spec
    # config.yaml fed back with --config resolves to the identical specification
    again = plan_run(parse_config(["--config", str(out / "config.yaml")], "test")[0]).spec
    assert again == run_spec
    assert yaml.safe_load((out / "config.yaml").read_text()) == run_spec.to_dict()
    ckpt = load_checkpoint(out / "dino_detector_final.pth")
    assert ckpt["spec"] == run_spec.to_dict()
    assert export_main(["--checkpoint", str(out / "dino_detector_final.pth"), "--format", "pretrained",
                        "--output", str(tmp_path / "folder")]) == 0
    folder_config = yaml.safe_load((tmp_path / "folder" / "config.json").read_text())
    assert folder_config.pop("weights") == "raw" and folder_config == run_spec.to_dict()
    # the spec alone rebuilds the model: no metadata entry needed
    alone = tmp_path / "spec_only.pth"
    torch.save({"model": ckpt["model"], "spec": ckpt["spec"]}, alone)
    rebuilt, folder = ObjectDetector.from_checkpoint(alone).eval(), ObjectDetector.from_pretrained(tmp_path / "folder")
    assert rebuilt.config == dataclasses.replace(run_spec.model, backbone_weights="random", pretrained=False)
    assert rebuilt.resize.image_size == 64 and rebuilt.class_names == ["circle", "square", "triangle"]
    image = torch.rand(1, 3, 64, 48)
    with torch.no_grad():
        a, b = rebuilt(image), folder.eval()(image)
    assert torch.equal(a["pred_boxes"], b["pred_boxes"]) and torch.equal(a["pred_logits"], b["pred_logits"])


def test_a_checkpoint_on_an_encoder_file_rebuilds_without_the_file(shapes, tmp_path):
    from dino_detector.train import main as train_main

    torch.manual_seed(0)
    encoder = tmp_path / "enc" / "encoder_final.pth"
    save_encoder(FlexibleEncoder("flexible-tiny"), "flexible-tiny", encoder)
    out = tmp_path / "det"
    argv = [a for a in TINY_RUN if a != "tiny"]
    argv[argv.index("--dino_model") + 1:argv.index("--dino_model") + 1] = [str(encoder)]
    assert train_main([*argv, *shapes, "--output_dir", str(out)]) == 0
    spec = load_checkpoint(out / "dino_detector_final.pth")["spec"]
    assert (spec["model"]["backbone_weights"], spec["model"]["backbone_arch"]) == ("encoder", "flexible-tiny")
    encoder.unlink()
    model = ObjectDetector.from_checkpoint(out / "dino_detector_final.pth")
    assert type(model.backbone.vit).__name__ == "FlexibleEncoder"
