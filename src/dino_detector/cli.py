"""Command-line flags generated from the config dataclasses: one definition of every setting.

Every field becomes ``--name VALUE``; booleans become ``--name`` / ``--no_name``; lists take several values.
A few aliases keep the DINOv2-OD command line (``--lightweight`` = ``--preset lightweight``).
"""
from __future__ import annotations

import argparse
import dataclasses
import typing

from .config import PRESETS, SECTIONS, Config, build_config


def _cli_type(annotation):
    """The scalar type a flag parses: Optional[X] -> X, list -> list."""
    if typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def add_dataclass_arguments(parser: argparse.ArgumentParser, klass, title: str) -> None:
    """One flag per field of ``klass`` (unset flags stay None, so defaults come from the dataclass)."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(klass)
    for f in dataclasses.fields(klass):
        kind = _cli_type(hints[f.name])
        if kind is bool:
            group.add_argument(f"--{f.name}", dest=f.name, action="store_const", const=True, default=None)
            group.add_argument(f"--no_{f.name}", dest=f.name, action="store_const", const=False, default=None)
        elif kind is list:
            group.add_argument(f"--{f.name}", dest=f.name, nargs="+", default=None)
        else:
            group.add_argument(f"--{f.name}", dest=f.name, type=kind, default=None)


def add_config_arguments(parser: argparse.ArgumentParser, sections: typing.Iterable[str] = tuple(SECTIONS)):
    for section in sections:
        add_dataclass_arguments(parser, SECTIONS[section], section)


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", default="standard", choices=sorted(PRESETS))
    parser.add_argument("--config", dest="config_file", default=None, help="YAML file of settings")
    parser.add_argument("--lightweight", action="store_true", help="same as --preset lightweight")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    values = vars(args).copy()
    preset = "lightweight" if values.pop("lightweight", False) else values.pop("preset", "standard")
    values.pop("preset", None)
    config_file = values.pop("config_file", None)
    fields = {f.name for klass in SECTIONS.values() for f in dataclasses.fields(klass)}
    overrides = {k: v for k, v in values.items() if k in fields and v is not None}
    return build_config(preset, config_file, **overrides)
