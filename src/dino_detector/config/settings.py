"""Frozen settings dataclasses and the one loader behind the command line, YAML files and the Python API.

A settings class holds values and sections (nested settings classes). Every value name is unique within the
class, so a flat key (``lr``) and a nested one (``train: {lr: ...}``) name the same field. Values are
checked and converted by their annotation: ``Literal`` fields take only their choices, ``list[X]`` fields
convert each item, YAML's strings such as ``3e-4`` become floats. Any problem raises a ``SettingsError``
whose one-line message names the setting and what it accepts.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

RESOLVED = {"resolved": True}  # filled in by the run's resolution (spec.py); not a command-line flag
INTERNAL = {"internal": True}  # bookkeeping, never written or read
NO_FLAG = {"flag": False}  # a value the command line sets its own way (``--preset``)
TRUE_WORDS, FALSE_WORDS = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


class SettingsError(ValueError):
    """A setting that does not exist or has a value it cannot take (the message is one line)."""


class UnknownSettingError(SettingsError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class FieldType:
    """What a field accepts: ``base`` (bool, int, float, str), optionally None, a list of ``base``, or one of
    ``choices``."""
    base: type
    optional: bool = False
    is_list: bool = False
    choices: tuple | None = None

    def words(self) -> str:
        """How ``--help`` and error messages name the accepted values."""
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        noun = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[self.base]
        return f"a list of {noun.replace('an ', '').replace('a ', '')}s" if self.is_list else noun


def field_type(annotation) -> FieldType:
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional, annotation = True, args[0]
    if typing.get_origin(annotation) is Literal:
        choices = typing.get_args(annotation)
        return FieldType(type(choices[0]), optional, choices=choices)
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation) or (str,)
        return FieldType(item, optional, is_list=True)
    return FieldType(annotation, optional)


def coerce(value: Any, kind: FieldType, where: str) -> Any:
    """``value`` converted to what ``kind`` accepts, or a SettingsError naming ``where``."""
    if value is None and kind.optional:
        return None
    if kind.is_list:
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        return [coerce(item, FieldType(kind.base), f"{where}[{i}]") for i, item in enumerate(items)]
    converted = parse_scalar(value, kind.base)
    if converted is None:
        raise SettingsError(f"{where}: expected {kind.words()}, got {value!r}")
    if kind.choices and converted not in kind.choices:
        raise SettingsError(f"{where}: invalid choice {value!r} (choose from {', '.join(map(str, kind.choices))})")
    return converted


def parse_scalar(value: Any, base: type) -> Any:
    """``value`` as ``base``, or None when it is not one."""
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in TRUE_WORDS + FALSE_WORDS:
            return value.lower() in TRUE_WORDS
        return None
    if isinstance(value, bool) or isinstance(value, (list, tuple, dict)) or value is None:
        return None
    if base is str:
        return str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if base is int:
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                return None
        return int(number) if number.is_integer() else None
    return number


class Settings:
    """Methods of every frozen settings dataclass (the class itself declares the fields)."""

    @classmethod
    @functools.cache
    def sections(cls) -> dict[str, type]:
        """Section name -> its settings class."""
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)
                if isinstance(hints[f.name], type) and issubclass(hints[f.name], Settings)}

    @classmethod
    @functools.cache
    def value_fields(cls) -> dict[str, tuple[str | None, dataclasses.Field, FieldType]]:
        """Every value field, flat: name -> (its section or None, the dataclass field, its type)."""
        out: dict[str, tuple] = {}
        for owner, section in [(cls, None), *((k, s) for s, k in cls.sections().items())]:
            hints = typing.get_type_hints(owner)
            for f in dataclasses.fields(owner):
                if section is None and f.name in cls.sections() or f.metadata.get("internal"):
                    continue
                if f.name in out:
                    raise TypeError(f"{cls.__name__}: field '{f.name}' is defined twice")
                out[f.name] = (section, f, field_type(hints[f.name]))
        return out

    @classmethod
    def flatten(cls, data: dict, where: str = "settings") -> dict:
        """Flat, checked values from nested ({"train": {"lr": 1}}) and / or flat ({"lr": 1}) keys."""
        if not isinstance(data, dict):
            raise SettingsError(f"{where}: expected a mapping of settings, got {type(data).__name__}")
        fields, flat = cls.value_fields(), {}
        for key, value in data.items():
            if key in cls.sections() and isinstance(value, dict):  # a section (a value may share its name)
                for name, v in value.items():
                    if fields.get(name, (None,))[0] != key:
                        raise UnknownSettingError(f"{where}: unknown setting '{key}.{name}'{cls.suggest(name)}")
                    flat[name] = coerce(v, fields[name][2], f"{where}: {name}")
            elif key in fields:
                flat[key] = coerce(value, fields[key][2], f"{where}: {key}")
            elif key in cls.sections():
                raise SettingsError(f"{where}: '{key}' is a section: expected a mapping of its settings, got {value!r}")
            else:
                raise UnknownSettingError(f"{where}: unknown setting '{key}'{cls.suggest(str(key))}")
        return flat

    @classmethod
    def suggest(cls, name: str) -> str:
        close = difflib.get_close_matches(name, list(cls.value_fields()), n=1, cutoff=0.6)
        return f" (did you mean '{close[0]}'?)" if close else ""

    @classmethod
    def from_dict(cls, data: dict, where: str = "settings", **internal):
        """An instance from nested and / or flat values over the defaults."""
        flat = cls.flatten(data, where)
        sections = {name: klass(**{k: v for k, v in flat.items() if cls.value_fields()[k][0] == name})
                    for name, klass in cls.sections().items()}
        top = {k: v for k, v in flat.items() if cls.value_fields()[k][0] is None}
        return cls(**sections, **top, **internal)

    def to_dict(self) -> dict:
        """Nested plain values (what ``config.yaml`` holds); internal fields left out."""
        out = {}
        for f in dataclasses.fields(self):
            if f.metadata.get("internal"):
                continue
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, Settings) else _plain(value)
        return out

    def flat(self) -> dict:
        """Every value by its flat name."""
        nested = self.to_dict()
        return {name: (nested[section][name] if section else nested[name])
                for name, (section, _, _) in self.value_fields().items()}

    def update(self, overrides: dict):
        """A copy with ``overrides`` (nested or flat) applied; unknown keys raise UnknownSettingError."""
        return type(self).from_dict({**self.flat(), **self.flatten(overrides)}, **self.internals())

    def internals(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("internal")}

    def save(self, path: str | Path) -> None:
        import yaml
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: str | Path):
        """The settings a YAML file holds (over the defaults), with every key checked."""
        return cls.from_dict(read_yaml(path), where=str(path))


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SettingsError(f"settings file not found: {path}")
    return read_yaml_mapping(path, SettingsError, what="a mapping of settings")


def read_yaml_mapping(path: Path, error: type[Exception], what: str = "a mapping") -> dict:
    """The mapping a YAML file holds (an empty file: {}); ``error(message)`` when it is not valid YAML
    or holds something else. Every YAML file the package reads (settings, YOLO data.yaml) comes here."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected {what}, got {type(data).__name__}")
    return data


def _plain(value):
    return list(value) if isinstance(value, tuple) else value
