"""Reading ``POST /v1/jobs``'s body: JSON (one job or a list), or multipart, whose ``job`` part is that JSON
and whose other parts are image files the jobs name (``{"upload": "<part name>"}``)."""

from __future__ import annotations

import json
from typing import Any, Final

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import UploadFile

#: Files one multipart request may carry, and the bytes read of each at most (one over the limit of an
#: image is enough to refuse it by name).
MAX_FILES: Final = 20
FILE_READ_MAX: Final = 10 * 1024 * 1024 + 1


async def read_jobs_body(request: Request) -> tuple[Any, dict[str, bytes]]:
    """The decoded JSON body and the files of a multipart one (by part name)."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type == "multipart/form-data":
        return await _multipart(request)
    if media_type not in ("application/json", "") and not media_type.endswith("+json"):
        raise HTTPException(415, "Content-Type must be application/json or multipart/form-data")
    return _decode(await request.body(), ["body"]), {}


async def _multipart(request: Request) -> tuple[Any, dict[str, bytes]]:
    try:
        form = await request.form(max_files=MAX_FILES, max_fields=MAX_FILES + 1)
    except HTTPException:
        raise
    except Exception as error:  # a broken multipart body: python-multipart and Starlette raise their own
        raise HTTPException(400, f"There was an error parsing the multipart body ({type(error).__name__})") from None
    files: dict[str, bytes] = {}
    job: Any = None
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            files[name] = await value.read(FILE_READ_MAX)
        elif name == "job":
            job = _decode(value.encode(), ["body", "job"])
    await form.close()
    if job is None:
        raise RequestValidationError(
            [{"loc": ("body", "job"), "msg": "is required: the job (or list) as JSON", "type": "missing"}]
        )
    return job, files


def _decode(raw: bytes, loc: list[str | int]) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPException(400, "There was an error parsing the body") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise RequestValidationError(
            [{"loc": (*loc, error.pos), "msg": f"JSON decode error: {error.msg}", "type": "json_invalid"}]
        ) from None
