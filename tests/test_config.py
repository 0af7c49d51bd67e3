"""Config: YAML round trip, overrides, presets and the command line generated from the dataclasses."""
from __future__ import annotations

import dataclasses

import pytest

from dino_detector.cli import add_config_arguments, base_parser, config_from_args
from dino_detector.config import PRESETS, Config, build_config, field_section


def parse(argv: list[str]) -> Config:
    parser = base_parser("test")
    add_config_arguments(parser)
    return config_from_args(parser.parse_args(argv))


def test_yaml_round_trip(tmp_path):
    cfg = build_config("lightweight", lr=3e-4, lora_target_modules=["q_proj", "k_proj"],
                       train_images="/data/images", pretrained=False, image_size=96, score_threshold=0.25)
    path = tmp_path / "config.yaml"
    cfg.save(path)
    loaded = Config.load(path)
    assert loaded == cfg
    assert loaded.to_dict() == cfg.to_dict()
    assert loaded.preset == "lightweight"
    assert loaded.model.lora_target_modules == ["q_proj", "k_proj"]
    assert loaded.data.val_images is None


def test_default_config_round_trip(tmp_path):
    Config().save(tmp_path / "c.yaml")
    assert Config.load(tmp_path / "c.yaml") == Config()


def test_flat_overrides_reach_the_owning_section():
    cfg = Config().update({"lr": 0.5, "hidden_dim": 32, "image_size": 64, "focal_alpha": 0.3})
    assert cfg.train.lr == 0.5
    assert cfg.model.hidden_dim == 32
    assert cfg.data.image_size == 64
    assert cfg.loss.focal_alpha == 0.3
    assert field_section("num_queries") == "model"


def test_nested_overrides():
    cfg = Config().update({"train": {"lr": 0.25, "epochs": 3}, "model": {"num_queries": 7}, "preset": "x"})
    assert (cfg.train.lr, cfg.train.epochs, cfg.model.num_queries, cfg.preset) == (0.25, 3, 7, "x")
    # everything else keeps its default
    assert cfg.data == Config().data and cfg.loss == Config().loss


def test_every_field_name_is_unique_across_sections():
    names = [f.name for section in (Config().model, Config().data, Config().train, Config().loss)
             for f in dataclasses.fields(section)]
    assert len(names) == len(set(names))


def test_unknown_keys_raise_key_error():
    with pytest.raises(KeyError, match="no_such_setting"):
        Config().update({"no_such_setting": 1})
    with pytest.raises(KeyError, match="model.no_such_setting"):
        Config().update({"model": {"no_such_setting": 1}})
    with pytest.raises(KeyError):
        build_config(no_such_setting=1)


def test_load_rejects_a_yaml_that_is_not_a_mapping(tmp_path):
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        Config.load(tmp_path / "list.yaml")


def test_unknown_preset_raises():
    with pytest.raises(ValueError, match="preset"):
        build_config("huge")


def test_precedence_defaults_preset_yaml_overrides(tmp_path):
    yaml_file = tmp_path / "settings.yaml"
    yaml_file.write_text("train:\n  lr: 0.001\n  epochs: 7\nnum_queries: 33\n")
    cfg = build_config("lightweight", str(yaml_file), epochs=9, batch_size=None)
    assert cfg.model.hidden_dim == PRESETS["lightweight"]["hidden_dim"]  # preset over default
    assert cfg.model.num_queries == 33  # YAML over preset
    assert cfg.train.lr == 0.001  # YAML over default
    assert cfg.train.epochs == 9  # keyword override over YAML
    assert cfg.train.batch_size == Config().train.batch_size  # None means "not given"


def test_yaml_scientific_notation_becomes_a_float(tmp_path):
    yaml_file = tmp_path / "settings.yaml"
    yaml_file.write_text("lr: 3e-4\n")
    cfg = build_config("standard", str(yaml_file))
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == 3e-4


def test_cli_flags_build_the_expected_config():
    cfg = parse(["--no_pretrained", "--lr", "3e-4", "--lightweight", "--lora_target_modules", "q_proj", "k_proj"])

    expected = build_config("lightweight", lr=3e-4, pretrained=False, lora_target_modules=["q_proj", "k_proj"])
    assert cfg == expected
    assert cfg.preset == "lightweight"
    for name, value in PRESETS["lightweight"].items():  # the preset is applied
        assert getattr(getattr(cfg, field_section(name)), name) == value
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)
    assert cfg.model.pretrained is False
    assert cfg.model.lora_target_modules == ["q_proj", "k_proj"]
    assert cfg.train.batch_size == Config().train.batch_size  # untouched flags keep their defaults


def test_cli_types_booleans_and_preset_flag():
    cfg = parse(["--preset", "detr-dinov3", "--epochs", "3", "--image_size", "96", "--score_threshold", "0.3",
                 "--pretrained", "--no_aux_loss", "--checkpoint", "run/ckpt.pth"])
    assert cfg.preset == "detr-dinov3"
    assert cfg.model.attention == "standard"  # from the preset
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.data.image_size == 96
    assert cfg.train.score_threshold == 0.3
    assert cfg.model.pretrained is True and cfg.model.aux_loss is False
    assert cfg.train.checkpoint == "run/ckpt.pth"


def test_cli_yaml_file_then_flags(tmp_path):
    yaml_file = tmp_path / "settings.yaml"
    yaml_file.write_text("lr: 0.002\nepochs: 4\n")
    cfg = parse(["--config", str(yaml_file), "--epochs", "6"])
    assert cfg.train.lr == 0.002  # from the file: a flag that is not given does not override it
    assert cfg.train.epochs == 6


def test_cli_rejects_bad_values():
    with pytest.raises(SystemExit):
        parse(["--epochs", "three"])
    with pytest.raises(SystemExit):
        parse(["--preset", "enormous"])
