"""Command-line flags generated from the settings dataclasses: one definition of every setting.

Every value field becomes ``--name VALUE`` (lists take several values; booleans become ``--name`` /
``--no_name``), with its comment as the help text, its default and, for ``Literal`` fields, the allowed
values; every section is a group of ``--help``. A bad value, an unknown flag, a YAML key that names no
setting or a missing required flag stops at once with one line on stderr and exit code 2, before torch is
imported. A few aliases keep the DINOv2-OD command line (``--lightweight`` = ``--preset lightweight``).

A small generator on argparse rather than tyro or jsonargparse: it keeps every flag of the DINOv2-OD
command line as it was (``--no_flag`` booleans with underscores, one flat namespace, the aliases), its
errors are one line, and it adds no dependency to the core.
"""
from __future__ import annotations

import argparse
import difflib
import sys
import textwrap
import typing

from .config import PRESETS, Config, SettingsError, build_config
from .config.describe import FieldHelp, describe, show
from .config.settings import FieldType, parse_scalar, read_yaml

T = typing.TypeVar("T")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Flag help wrapped at spaces only: textwrap's default splits "Soft-NMS" into "Soft- NMS"."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


class SettingsParser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2) that suggest the nearest flag for a misspelt one."""

    def __init__(self, **kwargs):
        kwargs.setdefault("usage", "%(prog)s [flags]   (-h / --help lists them by section)")
        kwargs.setdefault("formatter_class", lambda prog: HelpFormatter(
            prog, max_help_position=38, width=118))
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        if message.startswith("unrecognized arguments"):
            flags = [s for a in self._actions for s in a.option_strings]
            for word in message.split(":", 1)[1].split():
                close = difflib.get_close_matches(word, flags, n=1, cutoff=0.6)
                if word.startswith("--") and close:
                    message += f" (did you mean {close[0]}?)"
                    break
        self.exit(2, f"error: {message}  (--help lists every flag)\n")


class Toggle(argparse.Action):
    """``--name`` sets True, ``--no_name`` sets False (the DINOv2-OD spelling, with an underscore)."""

    def __init__(self, option_strings, dest, **kwargs):
        name = option_strings[0][2:]
        super().__init__([f"--{name}", f"--no_{name}"], dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, not option_string.startswith("--no_"))

    def format_usage(self) -> str:
        return " | ".join(self.option_strings)


def _converter(kind: FieldType):
    """An argparse ``type`` that names what it expected: 'argument --batch_size: expected an integer, got 'x''."""
    def convert(text: str):
        value = parse_scalar(text, kind.base)
        if value is None:
            raise argparse.ArgumentTypeError(f"expected {FieldType(kind.base).words()}, got {text!r}")
        return value
    convert.__name__ = kind.base.__name__
    return convert


def _help(f: FieldHelp, default) -> str:
    text = f.description.replace("%", "%%")  # argparse expands %-formats in help
    if f.required:
        return f"{text} (required)"
    note = " from the preset" if default != f.default else ""
    return f"{text} [default: {show(default).replace('%', '%%')}{note}]"


def add_settings_arguments(parser: argparse.ArgumentParser, cls: type, defaults: dict | None = None,
                           sections: typing.Iterable[str] | None = None) -> None:
    """One flag per value field of the settings class ``cls``, a group per section. ``defaults``: values
    shown as the defaults instead of the dataclass's (a preset's). Unset flags are left out of the parsed
    namespace, so that lower layers (YAML, preset, defaults) keep their values."""
    defaults = defaults or {}
    groups: dict[str | None, argparse._ArgumentGroup] = {}
    wanted = set(sections) if sections is not None else None
    for f in describe(cls):
        if not f.flag or (wanted is not None and f.section not in wanted):
            continue
        if f.section not in groups:
            owner = cls.sections()[f.section] if f.section else cls
            doc = (owner.__doc__ or "").strip().splitlines()[0].rstrip(".") if f.section else ""
            title = f"{f.section}: {doc}" if doc else f.section
            groups[f.section] = parser.add_argument_group(title or "options")
        group = groups[f.section]
        default = defaults.get(f.name, f.default)
        common = dict(dest=f.name, default=argparse.SUPPRESS, help=_help(f, default))
        if f.kind.base is bool and not f.kind.is_list:
            group.add_argument(f"--{f.name}", action=Toggle, **common)
            continue
        if f.kind.choices:
            common.update(choices=f.kind.choices, metavar="{" + ",".join(map(str, f.kind.choices)) + "}")
        else:
            common["metavar"] = f.kind.base.__name__.upper()
        if f.kind.is_list:
            common["nargs"] = "+"
        if f.required:
            common["required"] = True
        group.add_argument(f"--{f.name}", type=_converter(f.kind), **common)


def parse_settings(cls: type[T], argv: list[str] | None, *, description: str, epilog: str | None = None,
                   config_file: bool = False, extra=None) -> tuple[T, argparse.Namespace]:
    """Settings of a command from its flags (and, with ``config_file``, a ``--config`` YAML file under them).
    ``extra(parser)`` adds flags that are not settings; their values come back in the namespace."""
    parser = SettingsParser(description=description, epilog=epilog)
    if config_file:
        parser.add_argument("--config", dest="config_file", default=None, metavar="FILE.yaml",
                            help="YAML file of settings, applied under the flags")
    if extra is not None:
        extra(parser)
    add_settings_arguments(parser, cls)
    args = parser.parse_args(argv)
    fields = cls.value_fields()
    given = {k: v for k, v in vars(args).items() if k in fields}
    try:
        base = cls.flatten(read_yaml(args.config_file), args.config_file) if getattr(args, "config_file", None) else {}
        return cls.from_dict({**base, **given}), args
    except SettingsError as err:
        parser.error(str(err))


# ---------------------------------------------------------------------------------------------- detection runs
def base_parser(description: str, epilog: str | None = None) -> SettingsParser:
    """A parser with the preset and YAML options of a detection run (its settings are added by
    ``add_config_arguments``)."""
    parser = SettingsParser(description=description, epilog=epilog)
    group = parser.add_argument_group("run settings", "precedence, lowest first: defaults < --preset < "
                                      "--config FILE.yaml < flags. The run writes them resolved to config.yaml.")
    group.add_argument("--preset", default=None, choices=sorted(PRESETS), metavar="{" + ",".join(sorted(PRESETS)) + "}",
                       help="start from this preset's settings (a YAML file's preset: key otherwise) "
                            "[default: standard]")
    group.add_argument("--config", dest="config_file", default=None, metavar="FILE.yaml",
                       help="YAML file of settings (flat or by section), e.g. a run's config.yaml")
    group.add_argument("--lightweight", action="store_true", help="same as --preset lightweight")
    return parser


def add_config_arguments(parser: argparse.ArgumentParser, sections: typing.Iterable[str] | None = None,
                         preset: str | None = None) -> None:
    """The flags of ``Config``'s sections (all by default); ``--help`` shows ``preset``'s values as defaults."""
    add_settings_arguments(parser, Config, PRESETS.get(preset or "standard"), sections)


def config_from_args(args: argparse.Namespace) -> Config:
    values = vars(args).copy()
    preset = "lightweight" if values.pop("lightweight", False) else values.pop("preset", None)
    values.pop("preset", None)
    config_file = values.pop("config_file", None)
    fields = Config.value_fields()
    return build_config(preset, config_file, **{k: v for k, v in values.items() if k in fields})


def _preset_in(argv: list[str]) -> str | None:
    """The preset named on the command line, for the defaults ``--help`` shows."""
    if "--lightweight" in argv:
        return "lightweight"
    for i, word in enumerate(argv):
        if word == "--preset" and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith("--preset="):
            return word.split("=", 1)[1]
    return None


def parse_config(argv: list[str] | None, description: str, epilog: str | None = None,
                 extra=None) -> tuple[Config, argparse.Namespace]:
    """A detection run's settings from its command line; exits with code 2 and one line on any bad value."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = base_parser(description, epilog)
    if extra is not None:
        extra(parser)
    add_config_arguments(parser, preset=_preset_in(argv))
    args = parser.parse_args(argv)
    try:
        return config_from_args(args), args
    except SettingsError as err:
        parser.error(str(err))
