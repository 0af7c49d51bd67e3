"""The settings of every command, as frozen dataclasses: one source for the command line (cli.py generates
the flags and their help from the fields), YAML files and the Python API.

``Config`` holds a detection run's four sections (model, data, train, loss) and the preset it started from;
``build_config`` merges, lowest first, defaults < preset < YAML file < keyword overrides (the flags).
spec.py turns a ``Config`` into the run's resolved specification, which every run writes to ``config.yaml``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .presets import PRESETS
from .pretrain import PretrainConfig
from .sections import DataConfig, LossConfig, ModelConfig, TrainConfig
from .settings import INTERNAL, NO_FLAG, RESOLVED, Settings, SettingsError, UnknownSettingError, read_yaml


@dataclass(frozen=True)
class Config(Settings):
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    preset: str = field(default="standard", metadata=NO_FLAG)  # the preset the settings started from
    # flat names of the settings the user gave (YAML or flags), for messages about values a rule overrides
    given: frozenset = field(default=frozenset(), compare=False, repr=False, metadata=INTERNAL)



def field_section(name: str) -> str:
    """The section that owns a flat field name."""
    if name not in Config.value_fields() or Config.value_fields()[name][0] is None:
        raise UnknownSettingError(f"unknown setting '{name}'{Config.suggest(name)}")
    return Config.value_fields()[name][0]


def build_config(preset: str | None = None, yaml_file: str | None = None, **overrides) -> Config:
    """Defaults < preset < YAML < keyword overrides (flat field names; None means "not given"). The preset is
    ``preset``, else the YAML file's ``preset:`` key, else ``standard``; its values apply under the file's."""
    data = read_yaml(yaml_file) if yaml_file else {}
    file_preset = data.pop("preset", None)
    name = preset or file_preset or "standard"
    if name not in PRESETS:
        raise SettingsError(f"unknown preset '{name}'; choose one of {', '.join(sorted(PRESETS))}")
    from_file = Config.flatten(data, where=str(yaml_file))
    from_args = Config.flatten({k: v for k, v in overrides.items() if v is not None})
    values = {**PRESETS[name], **from_file, **from_args}
    return Config.from_dict({**values, "preset": name}, given=frozenset(from_file) | frozenset(from_args))


__all__ = ["Config", "DataConfig", "LossConfig", "ModelConfig", "NO_FLAG", "PRESETS", "PretrainConfig", "RESOLVED",
           "Settings", "SettingsError", "TrainConfig", "UnknownSettingError", "build_config", "field_section"]
