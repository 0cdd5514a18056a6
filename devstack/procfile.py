"""The ``Procfile``'s command lines, for the harness to run exactly what production runs.

A line is read as honcho reads it (``name: command``), its ``${VAR:-default}`` filled in from the values
given (else the default), and split as a shell would. ``uvicorn`` and ``celery`` run as ``python -m`` of
this interpreter, ``python`` is this interpreter: the virtualenv's, whatever ``PATH`` says.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path

PROCFILE = Path(__file__).resolve().parent.parent / "Procfile"
_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
#: Programs run as modules of this interpreter.
_MODULES = frozenset({"uvicorn", "celery"})


@cache
def processes() -> dict[str, str]:
    """Every process of the Procfile and its command line, as written."""
    found = {}
    for line in PROCFILE.read_text(encoding="utf-8").splitlines():
        if (match := _LINE.match(line.strip())) is not None:
            found[match[1]] = match[2]
    return found


def command(process: str, values: Mapping[str, str] | None = None) -> list[str]:
    """The argv of ``process`` (KeyError for one the Procfile does not have)."""
    values = values or {}

    def fill(match: re.Match[str]) -> str:
        name, default = match[1], match[2]
        if name in values:
            return values[name]
        if default is None:
            raise KeyError(f"the Procfile's {process} line needs ${name}")
        return default

    argv = shlex.split(_VARIABLE.sub(fill, processes()[process]))
    if argv[0] in _MODULES:
        return [sys.executable, "-m", *argv]
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    return argv


def with_option(argv: Sequence[str], flag: str, value: str | None = None) -> list[str]:
    """``argv`` with ``flag`` set to ``value`` (``--flag value`` or ``--flag=value``, whichever it has),
    or added; with ``value`` None, a flag without a value added once."""
    out = list(argv)
    for index, word in enumerate(out):
        if value is not None and word == flag and index + 1 < len(out):
            out[index + 1] = value
            return out
        if value is not None and word.startswith(f"{flag}="):
            out[index] = f"{flag}={value}"
            return out
        if value is None and word == flag:
            return out
    return [*out, flag] if value is None else [*out, flag, value]


def without_option(argv: Sequence[str], flag: str, *, takes_value: bool = True) -> list[str]:
    """``argv`` without ``flag`` (and its value)."""
    out: list[str] = []
    skip = False
    for word in argv:
        if skip:
            skip = False
            continue
        if word == flag:
            skip = takes_value
            continue
        if word.startswith(f"{flag}="):
            continue
        out.append(word)
    return out
