"""What the command line says about each setting: its description, default and accepted values.

The description of a field is the comment on its line in the dataclass source, or, when it has none, the
comment block right above it: the code's own comments are the help text, so they cannot drift apart
(``simple-parsing`` and ``tyro`` read field comments the same way).
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import textwrap
import tokenize
from dataclasses import dataclass

from .settings import FieldType, Settings


@dataclass(frozen=True)
class FieldHelp:
    name: str
    section: str | None
    kind: FieldType
    default: object
    description: str
    resolved: bool  # filled in by the run (no flag)
    flag: bool  # has a generated command-line flag
    required: bool  # no default: the command line must give it


@functools.cache
def field_comments(cls: type) -> dict[str, str]:
    """Field name -> its description, read from ``cls``'s source ('' where a field has no comment)."""
    source = textwrap.dedent(inspect.getsource(cls))
    inline: dict[int, str] = {}
    own_line: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            (own_line if not tok.line[: tok.start[1]].strip() else inline)[tok.start[0]] = text
    body = ast.parse(source).body[0].body
    out = {}
    for node in body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        lines = range(node.lineno, (node.end_lineno or node.lineno) + 1)
        text = next((inline[n] for n in lines if n in inline), "")
        if not text:
            above, n = [], node.lineno - 1
            while n in own_line:
                above.insert(0, own_line[n])
                n -= 1
            text = " ".join(above)
        out[node.target.id] = text
    return out


def describe(cls: type[Settings]) -> list[FieldHelp]:
    """Every value field of a settings class, in declaration order, with what ``--help`` shows."""
    out = []
    for name, (section, f, kind) in cls.value_fields().items():
        owner = cls.sections()[section] if section else cls
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out.append(FieldHelp(name, section, kind, default, field_comments(owner).get(name, ""),
                             bool(f.metadata.get("resolved")), f.metadata.get("flag", True)
                             and not f.metadata.get("resolved"), required))
    return out


def show(value) -> str:
    """A value as the command line writes it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) if value else "(none)"
    if value is None or value == "":
        return "(unset)"
    return str(value)
