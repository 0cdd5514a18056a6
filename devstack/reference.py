"""The configuration reference, written from the settings models themselves (``make docs``).

Every setting's environment variable, type, default and description come from :class:`config.settings.Settings`
and the models it nests (a field's docstring is its description): the page can never list a setting that
does not exist, miss one that does, or show a default the code does not have.
``tests/unit/test_config_reference.py`` fails when a setting has no description or the committed page is
not what this writes.

    python -m devstack.reference docs/configuration.md
"""

from __future__ import annotations

import argparse
import json
import typing
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from types import NoneType, UnionType
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from config.settings import Settings

PREFIX = str(Settings.model_config["env_prefix"])
DELIMITER = str(Settings.model_config["env_nested_delimiter"])

INTRO = """# Configuration

Every setting is an environment variable prefixed `IMAGINEQ_` (a nested one with `__`, e.g.
`IMAGINEQ_S3__BUCKET`), or a line of a `.env` file in the working directory; lists and tables are JSON.
Invalid configuration stops a process at start with one message listing every bad field (a secret's value
is never shown). `.env.example` lists every setting with its default, ready to copy; docker compose gives
each process the secrets it uses (see [operating it](operating.md)).

This page is written from the settings models themselves (`python -m devstack.reference`): each row is a
field of `config/`, its description the field's own docstring.
"""


def type_name(annotation: Any) -> str:
    """A short, readable name of a field's type."""
    origin = typing.get_origin(annotation)
    args = [arg for arg in typing.get_args(annotation) if arg is not NoneType]
    if annotation is SecretStr:
        return "secret"
    if origin in (UnionType, typing.Union):
        return " or ".join(type_name(arg) for arg in args)
    if origin is typing.Literal:
        return " / ".join(f"`{arg}`" for arg in typing.get_args(annotation))
    if origin in (list, tuple):
        inner = ", ".join(type_name(arg) for arg in args if arg is not Ellipsis)
        return f"list of {inner}" if origin is list else f"({inner})"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"{annotation.__name__} (below)"
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return " / ".join(f"`{member.value}`" for member in annotation)
    return {str: "string", int: "integer", float: "number", bool: "true / false"}.get(annotation, str(annotation))


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, BaseModel):
        return "see below"
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, list | tuple | dict):
        text = json.dumps(value, default=str)
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = str(value)
    return f"`{text}`"


def description(field: FieldInfo) -> str:
    return " ".join((field.description or "").split()).replace("|", "\\|")


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The settings models a field holds (itself, or the items of a list of them)."""
    found = []
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            found.append(candidate)
    return found


def rows(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, FieldInfo]]:
    """(variable, field) of each setting of ``model`` itself, nested models walked through the delimiter."""
    for name, field in model.model_fields.items():
        nested = [m for m in models_in(field.annotation) if typing.get_origin(field.annotation) is not list]
        if nested:
            yield from rows(nested[0], f"{prefix}{name.upper()}{DELIMITER}")
        else:
            yield f"{prefix}{name.upper()}", field


def table(entries: list[tuple[str, FieldInfo]], head: str) -> list[str]:
    lines = [f"| {head} | type | default | description |", "|---|---|---|---|"]
    for name, field in entries:
        lines.append(f"| `{name}` | {type_name(field.annotation)} | {default_text(field)} | {description(field)} |")
    return lines


def sections() -> list[tuple[str, list[tuple[str, FieldInfo]]]]:
    """The top-level settings, then one section per nested model (in the order the fields come)."""
    top: list[tuple[str, FieldInfo]] = []
    nested: list[tuple[str, list[tuple[str, FieldInfo]]]] = []
    for name, field in Settings.model_fields.items():
        models = models_in(field.annotation)
        if models and typing.get_origin(field.annotation) is not list:
            nested.append(
                (f"`{PREFIX}{name.upper()}{DELIMITER}*`", list(rows(models[0], f"{PREFIX}{name.upper()}{DELIMITER}")))
            )
        else:
            top.append((f"{PREFIX}{name.upper()}", field))
    return [("Settings", top), *nested]


def list_items() -> list[tuple[str, type[BaseModel]]]:
    """The JSON lists of objects (accounts, principals and their webhooks), for a table of their fields."""
    found: list[tuple[str, type[BaseModel]]] = []

    def walk(model: type[BaseModel], where: str) -> None:
        for name, field in model.model_fields.items():
            for item in models_in(field.annotation):
                if typing.get_origin(field.annotation) is list:
                    label = f"{where}{name}"
                    found.append((label, item))
                    walk(item, f"{label}[].")
                else:
                    walk(item, f"{where}{name}.")

    walk(Settings, "")
    return found


def page() -> str:
    lines = [INTRO]
    for title, entries in sections():
        lines += [f"## {title}", "", *table(entries, "variable"), ""]
    for label, model in list_items():
        lines += [f"## Each item of `{label}`", "", (model.__doc__ or "").strip().splitlines()[0], ""]
        lines += [*table([(name, field) for name, field in model.model_fields.items()], "field"), ""]
    return "\n".join(lines).rstrip() + "\n"


def undescribed() -> list[str]:
    """Every setting (and field of a listed object) without a description."""
    missing = [name for _, entries in sections() for name, field in entries if not field.description]
    for label, model in list_items():
        missing += [f"{label}[].{name}" for name, field in model.model_fields.items() if not field.description]
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="the page to write (docs/configuration.md)")
    args = parser.parse_args(argv)
    args.path.write_text(page(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
