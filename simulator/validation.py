"""createTask body validation: every failure is a 422 whose msg names the field and the limit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from simulator.errors import ApiError

MODEL = "grok-imagine/text-to-video"
MAX_PROMPT_CHARS = 5000
ASPECT_RATIOS = ("2:3", "3:2", "1:1")
MODES = ("fun", "normal", "spicy")


@dataclass(frozen=True)
class CreateRequest:
    model: str
    prompt: str
    aspect_ratio: str
    mode: str
    callback_url: str | None
    body: dict[str, Any]  #: the request as received, echoed back in ``param``


def _invalid(msg: str) -> ApiError:
    return ApiError(422, msg)


def validate_create(body: Any) -> CreateRequest:
    if not isinstance(body, dict):
        raise _invalid("request body must be a JSON object")
    model = body.get("model")
    if model is None:
        raise _invalid(f"model is required (must be {MODEL!r})")
    if model != MODEL:
        raise _invalid(f"model must be {MODEL!r}")
    callback_url = body.get("callBackUrl") or None  # "" means no callback
    if callback_url is not None and not (isinstance(callback_url, str) and _is_http_url(callback_url)):
        raise _invalid("callBackUrl must be an http(s) URL")
    inp = body.get("input")
    if inp is None:
        raise _invalid("input is required")
    if not isinstance(inp, dict):
        raise _invalid("input must be an object")
    prompt = inp.get("prompt")
    if prompt is None:
        raise _invalid("input.prompt is required")
    if not isinstance(prompt, str):
        raise _invalid("input.prompt must be a string")
    if not prompt.strip():
        raise _invalid("input.prompt must not be empty")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise _invalid(f"input.prompt must be at most {MAX_PROMPT_CHARS} characters (got {len(prompt)})")
    aspect_ratio = inp.get("aspect_ratio", "2:3")
    if aspect_ratio not in ASPECT_RATIOS:
        raise _invalid(f"input.aspect_ratio must be one of {', '.join(ASPECT_RATIOS)}")
    mode = inp.get("mode", "normal")
    if mode not in MODES:
        raise _invalid(f"input.mode must be one of {', '.join(MODES)}")
    return CreateRequest(
        model=MODEL,
        prompt=prompt,
        aspect_ratio=aspect_ratio,
        mode=mode,
        callback_url=callback_url,
        body=body,
    )


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)
