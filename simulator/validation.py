"""createTask body validation: every failure is a 422 whose msg names the field and the limit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from simulator.errors import ApiError
from simulator.models import MODELS, Checked, CheckImage, FindParent, Model


@dataclass(frozen=True)
class CreateRequest:
    model: Model
    checked: Checked
    callback_url: str | None
    body: dict[str, Any]  #: the request as received, echoed back in ``param``

    @property
    def prompt(self) -> str:
        return self.checked.prompt


def _invalid(msg: str) -> ApiError:
    return ApiError(422, msg)


def validate_create(body: Any, find: FindParent, check_image: CheckImage) -> CreateRequest:
    if not isinstance(body, dict):
        raise _invalid("request body must be a JSON object")
    name = body.get("model")
    if name is None:
        raise _invalid(f"model is required (one of {', '.join(MODELS)})")
    model = MODELS.get(name) if isinstance(name, str) else None
    if model is None:
        raise _invalid(f"model must be one of {', '.join(MODELS)}")
    callback_url = body.get("callBackUrl") or None  # "" means no callback
    if callback_url is not None and not (isinstance(callback_url, str) and _is_http_url(callback_url)):
        raise _invalid("callBackUrl must be an http(s) URL")
    inp = body.get("input")
    if inp is None:
        raise _invalid("input is required")
    if not isinstance(inp, dict):
        raise _invalid("input must be an object")
    checked = model.check(inp, find, check_image)
    return CreateRequest(model=model, checked=checked, callback_url=callback_url, body=body)


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)
