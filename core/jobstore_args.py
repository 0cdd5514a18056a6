"""How the job store's Lua scripts read their arguments: field writes as ``set pairs, deletes,
increments`` with the values encoded as Redis keeps them, and the states a compare-and-set expects."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from core.jobs import MANAGED_FIELDS, TIMESTAMP_PREFIX, JobState

FieldValue = str | int | float | None


def update_args(
    expect: JobState | Iterable[JobState], fields: Mapping[str, FieldValue], incr: Mapping[str, int]
) -> list[str]:
    """job_update.lua's ARGV: the expected states, then the fields and increments."""
    if "task_id" in fields:
        raise ValueError("task_id is written by transition(), which also keeps the task index")
    states = sorted(states_of(expect) or (), key=lambda state: state.value)
    return [str(len(states)), *(state.value for state in states), *field_args(fields, incr)]


def text(value: str | bytes) -> str:
    """A Redis reply as text, whether or not the client decodes responses."""
    return value.decode() if isinstance(value, bytes) else value


def optional_text(value: str | bytes | None) -> str | None:
    """:func:`text`, keeping None."""
    return None if value is None else text(value)


def encode(name: str, value: str | int | float) -> str:
    """A field value as stored (floats round-trip exactly); booleans are refused, never stored as "True"."""
    if isinstance(value, bool):
        raise TypeError(f"field {name!r}: booleans are not stored; pass 0 or 1")
    if isinstance(value, float):
        return repr(value)
    return str(value)


def check_writable(fields: Mapping[str, Any]) -> None:
    """Refuses fields only the store writes (state, timestamps, ...)."""
    for name in fields:
        if name in MANAGED_FIELDS or name.startswith(TIMESTAMP_PREFIX):
            raise ValueError(f"field {name!r} is written by the store itself")


def field_args(fields: Mapping[str, FieldValue], incr: Mapping[str, int]) -> list[str]:
    """``s, pairs.., d, names.., c, pairs..`` as the scripts read them; '' and None delete."""
    check_writable(fields)
    check_writable(incr)
    set_pairs: list[str] = []
    deletes: list[str] = []
    for name, value in fields.items():
        if value is None or value == "":
            deletes.append(name)
        else:
            set_pairs += [name, encode(name, value)]
    incr_pairs: list[str] = []
    for name, by in incr.items():
        incr_pairs += [name, str(int(by))]
    return [
        str(len(set_pairs) // 2),
        *set_pairs,
        str(len(deletes)),
        *deletes,
        str(len(incr_pairs) // 2),
        *incr_pairs,
    ]


def states_of(expect: JobState | Iterable[JobState] | None) -> frozenset[JobState] | None:
    """The states a compare-and-set accepts (None: any)."""
    if expect is None:
        return None
    if isinstance(expect, JobState):
        return frozenset({expect})
    return frozenset(expect)
