"""Fault switches for chaos tests: forced error answers on chosen endpoints.

``force_status`` takes ``{"code": 500, "count": 2, "endpoint": "createTask"}`` or a list of such
rules, each optionally with ``msg`` and ``retry_after_s``. The next ``count`` calls to that
endpoint answer ``code`` before any other check (maintenance and auth included). ``endpoint`` is
one of ENDPOINTS or ``"*"`` (any, the default); ``count`` -1 means until cleared with
``"force_status": []``. Rules are consumed in order. The error style applies, except on
``files``, which always answers a plain HTTP status like a CDN would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ENDPOINTS = ("createTask", "recordInfo", "download-url", "credit", "files")


@dataclass
class ForcedStatus:
    code: int
    count: int
    endpoint: str
    msg: str
    retry_after_s: int | None = None  #: sent as Retry-After; defaults to 1 for a forced 429

    def public(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "count": self.count,
            "endpoint": self.endpoint,
            "msg": self.msg,
            "retry_after_s": self.retry_after_s,
        }


def parse_force_status(value: Any) -> list[ForcedStatus]:
    """Validate a ``force_status`` config value; raises ValueError naming the problem."""
    rules = value if isinstance(value, list) else [value]
    out: list[ForcedStatus] = []
    for rule in rules:
        if not isinstance(rule, dict):
            raise ValueError("force_status must be an object or a list of objects")
        code = rule.get("code")
        count = rule.get("count", 1)
        endpoint = rule.get("endpoint", "*")
        msg = rule.get("msg", "forced error")
        if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
            raise ValueError("force_status.code must be an integer between 100 and 599")
        if isinstance(count, bool) or not isinstance(count, int) or count < -1 or count == 0:
            raise ValueError("force_status.count must be a positive integer or -1")
        if endpoint != "*" and endpoint not in ENDPOINTS:
            raise ValueError(f"force_status.endpoint must be '*' or one of {', '.join(ENDPOINTS)}")
        if not isinstance(msg, str):
            raise ValueError("force_status.msg must be a string")
        retry_after = rule.get("retry_after_s", 1 if code == 429 else None)
        if retry_after is not None and (
            isinstance(retry_after, bool) or not isinstance(retry_after, int) or retry_after < 1
        ):
            raise ValueError("force_status.retry_after_s must be a positive integer")
        out.append(ForcedStatus(code, count, endpoint, msg, retry_after))
    return out


class Faults:
    def __init__(self) -> None:
        self.rules: list[ForcedStatus] = []

    def take(self, endpoint: str) -> ForcedStatus | None:
        """Consume one use of the first rule matching ``endpoint``, if any."""
        for i, rule in enumerate(self.rules):
            if rule.endpoint in ("*", endpoint):
                if rule.count > 0:
                    rule.count -= 1
                    if rule.count == 0:
                        del self.rules[i]
                return rule
        return None
