"""Log lines for every ImagineQ process: one line per event, text or JSON, secrets redacted.

:func:`configure_logging` installs one handler on the root logger; Celery workers and beat call it from
the ``setup_logging`` signal (``workers/celery.py``), the web process when ``producers.http`` is loaded
by uvicorn, the CLI in ``producers.cli.main``. Records pass two filters, then the formatter:

- :class:`JobContextFilter` names the job a record is about (``job_id``) — from ``extra``, from the
  Celery task running in this process (its first argument is the job id), from Celery's own
  "Task imagineq.submit[...] received/succeeded" lines (their ``args``), or from "job <id>" in the text;
- :class:`RedactingFilter` renders the message and rewrites it redacted, so every handler after it and
  the traceback text (``exc_text``) carry no secret;
- :class:`LineFormatter` writes ``text`` or ``json`` and redacts the finished line once more, which also
  covers fields added by ``extra`` and handlers installed by others that share the formatter.

:class:`Redactor` removes every configured secret (API keys, HMAC key, S3 keys, ingress tokens) by value,
and by shape: ``Bearer``/``Basic`` credentials, passwords in URLs (``redis://:pw@host``), URL query strings
(presigned links carry their signature there), the per-job token of callback paths, AWS signatures.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import IO, Any

from config.settings import Settings

REDACTED = "***"
#: Shorter configured secrets are not redacted by value (they would shred ordinary words, e.g. moto's
#: "local" credentials); no real key is that short.
MIN_SECRET_CHARS = 6
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(processName)s] %(message)s"
#: Loggers that install their own handlers and stop propagation; the web process takes them over.
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")

_JOB_ID = r"[0-9a-f]{32}"
_JOB_IN_TEXT = re.compile(rf"\bjob ({_JOB_ID})\b")
_JOB_IN_ARGS = re.compile(rf"['\"]({_JOB_ID})['\"]")
_HANDLER_MARK = "_imagineq_handler"

#: (pattern, replacement) applied in order; each keeps what identifies the thing and drops the secret.
_SHAPES: tuple[tuple[re.Pattern[str], str], ...] = (
    # Bearer credentials anywhere; Basic ones after "Authorization" (the word "basic" is common prose).
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"), rf"\1{REDACTED}"),
    (re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?\s*basic\s+)[A-Za-z0-9+/=]+"), rf"\1{REDACTED}"),
    # user:password@ in any URL (Redis, S3 endpoints, proxies).
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@'\"]*:)[^@\s/'\"]+@"), rf"\1{REDACTED}@"),
    # Query strings of http(s) links: presigned S3 URLs and result links carry their signature there.
    (re.compile(r"(?i)\b(https?://[^\s?#'\"<>]+)\?[^\s#'\"<>]+"), rf"\1?{REDACTED}"),
    # The per-job secret in callback paths (uvicorn's access log prints the path).
    (re.compile(r"(/v1/callbacks/[^/\s'\"]+/)[^\s/?#'\"]+"), rf"\1{REDACTED}"),
    # AWS SigV4 signatures and session tokens outside a query string (botocore debug logs).
    (re.compile(r"(?i)\b(signature=|x-amz-security-token[\"']?\s*[:=]\s*[\"']?)[^\s,&'\"]+"), rf"\1{REDACTED}"),
    # key=value / "key": "value" pairs whose name says secret.
    (
        re.compile(
            r"(?i)((?:api[_-]?key|secret|password|passwd|hmac[_-]key|token|basic[_-]auth)"
            r"[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&}]+"
        ),
        rf"\1{REDACTED}",
    ),
)


#: Every shape above needs one of these in the text; a line without any skips the shapes (most lines: a
#: worker writes several per job, and the shapes cost ten times what this one search does).
_SHAPE_MARKERS = re.compile(
    r"(?i)bearer|basic|@|\?|/v1/callbacks/|signature=|x-amz-security-token|api[_-]?key|secret|passw|hmac|token"
)


class Redactor:
    """Removes configured secrets (by value) and credential-shaped text (by pattern) from a string."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values = sorted({s for s in secrets if len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True)
        self._values = re.compile("|".join(map(re.escape, values))) if values else None

    def redact(self, text: str) -> str:
        if self._values is not None:
            text = self._values.sub(REDACTED, text)
        if _SHAPE_MARKERS.search(text) is None:
            return text
        for pattern, replacement in _SHAPES:
            text = pattern.sub(replacement, text)
        return text

    @classmethod
    def for_settings(cls, settings: Settings) -> Redactor:
        return cls(secrets_of(settings))


def secrets_of(settings: Settings) -> list[str]:
    """Every secret value the settings hold."""
    candidates = [
        settings.api_key,
        *(account.api_key for account in settings.accounts),
        settings.callbacks.hmac_key,
        settings.s3.access_key_id,
        settings.s3.secret_access_key,
        *settings.ingress_tokens,
        *(principal.token for principal in settings.ingress_principals if principal.token is not None),
        *settings.ops_tokens,
    ]
    return [secret.get_secret_value() for secret in candidates if secret is not None]


def job_id_of(record: logging.LogRecord) -> str | None:
    """The job a record is about, or None (see the module docstring for where it is looked for)."""
    given = getattr(record, "job_id", None)
    if isinstance(given, str) and given:
        return given
    args = record.args
    if isinstance(args, Mapping) and str(args.get("name", "")).startswith("imagineq."):
        found = _JOB_IN_ARGS.search(str(args.get("args", "")))
        if found:
            return found[1]
    request_args = _current_task_args()
    if request_args and isinstance(request_args[0], str) and re.fullmatch(_JOB_ID, request_args[0]):
        return request_args[0]
    try:
        message = record.getMessage()
    except (TypeError, ValueError):
        message = str(record.msg)
    found = _JOB_IN_TEXT.search(message)
    return found[1] if found else None


def _current_task_args() -> tuple[Any, ...] | None:
    """Arguments of the ImagineQ task running in this process (Celery imported lazily: the CLI has none)."""
    celery_state = sys.modules.get("celery._state")
    if celery_state is None:
        return None
    task = celery_state.get_current_task()
    if task is None or not str(task.name).startswith("imagineq."):
        return None
    args = getattr(task.request, "args", None)
    return tuple(args) if args else None


class JobContextFilter(logging.Filter):
    """Sets ``record.job_id`` (None when the record is about no job in particular)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.job_id = job_id_of(record)
        return True


class RedactingFilter(logging.Filter):
    """Renders the message (and traceback) redacted into the record, so nothing after it sees a secret."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a bad format string: keep what there is, redacted
            message = f"{record.msg} {record.args!r}"
        record.msg = self.redactor.redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redactor.redact(record.exc_text)
            record.exc_info = None  # the redacted text replaces it; a formatter must not re-render it
        if record.stack_info:
            record.stack_info = self.redactor.redact(record.stack_info)
        return True


class LineFormatter(logging.Formatter):
    """``text``: one readable line (``job=<id>`` appended when the message does not name it);
    ``json``: one object per line with ``ts level logger service process pid msg`` and ``job_id``,
    ``exc`` when known. The finished line is redacted again."""

    def __init__(self, log_format: str, redactor: Redactor, *, service: str) -> None:
        super().__init__(TEXT_FORMAT)
        if log_format not in ("text", "json"):
            raise ValueError(f"log_format must be text or json, not {log_format!r}")
        self.log_format = log_format
        self.redactor = redactor
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        if self.log_format == "json":
            return self.redactor.redact(self._json(record))
        message = record.getMessage()
        job_id = getattr(record, "job_id", None)
        # A text record is one line: CR and LF inside any field (a message quoting input, a job id) are
        # escaped, so no input can write a line that reads as a record of its own. A traceback that
        # follows is indented, every line of it.
        saved = record.msg, record.args
        record.msg, record.args = _one_line(message), None
        try:
            head, newline, rest = super().format(record).partition("\n")
        finally:
            record.msg, record.args = saved
        if job_id and job_id not in message:
            head = f"{head} job={_one_line(str(job_id))}"
        if newline:
            head += "".join(f"\n    {part}" for part in rest.split("\n"))
        return self.redactor.redact(head)

    def _json(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "service": self.service,
            "process": record.processName,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None)
        if job_id:
            data["job_id"] = job_id
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            data["exc"] = record.exc_text
        if record.stack_info:
            data["stack"] = record.stack_info
        return json.dumps(data, ensure_ascii=False, default=str)


def configure_logging(
    settings: Settings,
    *,
    service: str,
    level: int | str | None = None,
    stream: IO[str] | None = None,
    take_over: Iterable[str] = (),
) -> logging.Handler:
    """Install the ImagineQ handler on the root logger (replacing one installed before) and return it.

    ``level``: ``settings.log_level`` when set, else this (the process's default). ``take_over``: loggers
    whose own handlers are removed so they propagate through this one (uvicorn's).
    """
    redactor = Redactor.for_settings(settings)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(LineFormatter(settings.log_format, redactor, service=service))
    handler.addFilter(JobContextFilter())
    handler.addFilter(RedactingFilter(redactor))
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    chosen = settings.log_level or level
    if chosen is not None:
        root.setLevel(chosen)
    for name in take_over:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    return handler


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")
