"""Where a job's video and its JSON sidecar go in the bucket."""

from __future__ import annotations

import re
import string
from datetime import UTC, datetime
from typing import Final

_SEGMENT_RE: Final = re.compile(r"[A-Za-z0-9._-]+")


def object_key(template: str, *, job_id: str, task_id: str | None, account: str | None, when: datetime) -> str:
    """The object key for a job: ``template`` with ``{yyyy}{mm}{dd}`` (UTC date of ``when``, a naive
    ``when`` is read as UTC), ``{job_id}``, ``{task_id}``, ``{account}``.

    Raises ValueError when the template needs a value that is missing or not a safe path segment
    (letters, digits, ``._-``; not ``.`` or ``..``).
    """
    day = when.astimezone(UTC) if when.tzinfo is not None else when
    names = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    values: dict[str, str] = {
        "yyyy": f"{day.year:04d}",
        "mm": f"{day.month:02d}",
        "dd": f"{day.day:02d}",
    }
    for name, value in (("job_id", job_id), ("task_id", task_id), ("account", account)):
        if name not in names:
            continue
        if value is None:
            raise ValueError(f"key template {template!r} needs {{{name}}}, which this job does not have")
        if not _SEGMENT_RE.fullmatch(value) or value in {".", ".."}:
            raise ValueError(f"{name} {value!r} is not a safe object key segment")
        values[name] = value
    return template.format(**values)


def sidecar_key(key: str) -> str:
    """``videos/x.mp4`` → ``videos/x.json``; other keys get ``.json`` appended."""
    return (key.removesuffix(".mp4") if key.endswith(".mp4") else key) + ".json"


def output_key(key: str, index: int, extension: str) -> str:
    """Where output ``index`` of a job goes, from the job's key (the key template's): the key itself for
    the one video of a video job (where every video has always gone), else ``<key without its
    extension>/<index>.<extension>`` (``videos/2026/12/05/<job>/0.png``)."""
    stem, dot, current = key.rpartition(".")
    if index == 0 and dot and current == extension:
        return key
    return f"{stem if dot and '/' not in current else key}/{index}.{extension}"


def input_key(key: str, index: int, extension: str) -> str:
    """Where the job's input image ``index`` is kept, beside its outputs."""
    stem, dot, current = key.rpartition(".")
    return f"{stem if dot and '/' not in current else key}/input-{index}.{extension}"
