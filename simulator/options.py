"""Simulator options: the CLI flags and the run-time ``/__sim__/config`` overrides.

Time scale: every *simulated* duration (generation time, quota window, result-URL TTL,
download-url TTL, callback backoff and the ``Retry-After`` hint) is divided by ``time_scale``
to get wall-clock seconds. ``--time-scale 60`` turns the 3600 s window into 60 s of wall time.
Durations that protect the process itself (``callback_timeout_s``, ``delay_s``) stay in wall
seconds. Epoch timestamps in API fields (createTime, completeTime, updateTime) are real wall-clock
milliseconds; ``costTime`` is reported in *simulated* milliseconds (the drawn generation time).
Changing ``time_scale`` at run time rescales the quota window at once; tasks already created keep
their completion time and URL lifetime.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

ErrorStyle = Literal["envelope", "http"]

UNLIMITED_CREDITS = -1
#: What ``chat/credit`` reports for an account with unlimited credits.
UNLIMITED_CREDITS_REPORTED = 1_000_000_000


@dataclass
class SimOptions:
    """Everything that shapes the simulator's behaviour. Mutable: ``/__sim__/config`` edits it."""

    host: str = "127.0.0.1"
    port: int = 8900
    api_keys: list[str] = field(default_factory=lambda: ["sim-key"])
    max_in_progress: int = 30
    max_per_window: int = 300
    window_s: float = 3600.0
    #: recordInfo calls per key per rolling (simulated) second before 429; 0 = unlimited.
    record_info_per_s: float = 10.0
    #: Every key's balance at start (-1: unlimited); ``/__sim__/config`` may set one key's by its key id.
    credits: float = UNLIMITED_CREDITS
    #: recordInfo reports the credits a task consumed (``consumeCredits``), as some upstream models do.
    report_credits: bool = False
    maintenance: bool = False
    #: Generation time of text-to-video; set at run time or on the command line, of every model.
    gen_time: tuple[float, float] = (10.0, 25.0)
    #: Generation time per model pool; a pool not named takes its model's documented time.
    gen_times: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: (in progress, creations per window) per key for the pools other than text-to-video (whose are
    #: ``max_in_progress`` and ``max_per_window``); a pool not named takes its model's limits.
    pool_limits: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: createTask requests per key per ``create_rate_window_s`` (kie.ai: about 20 per 10 s); 0 = unlimited.
    create_rate: int = 0
    create_rate_window_s: float = 10.0
    #: Images one text-to-image task returns (Apikley says one; kie.ai's pages imply six).
    images_per_task: int = 1
    #: How long an uploaded file is kept (the upstream's file store: 3 days).
    upload_ttl_s: float = 3 * 86400.0
    fail_rate: float = 0.0
    moderation_words: list[str] = field(default_factory=lambda: ["forbidden", "nsfw-test"])
    error_style: ErrorStyle = "envelope"
    hmac_key: str | None = None
    callback_retries: int = 3
    callback_timeout_s: float = 15.0
    callback_backoff_s: float = 2.0
    callback_duplicates: float = 0.0
    url_ttl_s: float = 86400.0
    download_url_ttl_s: float = 1200.0
    #: 0: playable H.264 clips (``simulator.clips``); N > 0: files of N pseudo-random bytes
    video_bytes: int = 0
    time_scale: float = 1.0
    seed: int | None = None
    result_base_url: str | None = None
    #: Serve the /__sim__ controls (stats, task list with callback URLs, config, reset): tests only.
    admin: bool = False
    # Fault switches, run-time only (see faults.py).
    delay_s: float = 0.0
    drop_callbacks: bool = False
    #: Throttle result-file downloads to this many bytes per wall second (0 = unthrottled).
    file_rate_bytes_per_s: float = 0.0

    def wall(self, simulated_s: float) -> float:
        """Convert a simulated duration to wall-clock seconds."""
        return simulated_s / self.time_scale

    def public(self) -> dict[str, Any]:
        """The effective configuration as JSON, without secrets."""
        out = dataclasses.asdict(self)
        out["api_keys"] = len(self.api_keys)
        out["hmac_key"] = self.hmac_key is not None
        out["gen_time"] = list(self.gen_time)
        out["gen_times"] = {pool: list(times) for pool, times in self.gen_times.items()}
        out["pool_limits"] = {pool: list(limits) for pool, limits in self.pool_limits.items()}
        return out


def _positive_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{name} must be a non-negative integer")
    return v


def _non_negative(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a non-negative number")
    return float(v)


def _positive(name: str, v: Any) -> float:
    value = _non_negative(name, v)
    if value <= 0:
        raise ValueError(f"{name} must be > 0")
    return value


def _probability(name: str, v: Any) -> float:
    value = _non_negative(name, v)
    if value > 1:
        raise ValueError(f"{name} must be between 0 and 1")
    return value


def _bool(name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{name} must be a boolean")
    return v


def _style(name: str, v: Any) -> ErrorStyle:
    if v == "envelope":
        return "envelope"
    if v == "http":
        return "http"
    raise ValueError(f"{name} must be 'envelope' or 'http'")


def _gen_time(name: str, v: Any) -> tuple[float, float]:
    if not isinstance(v, list | tuple) or len(v) != 2:
        raise ValueError(f"{name} must be [min, max]")
    lo, hi = _non_negative(name, v[0]), _non_negative(name, v[1])
    if lo > hi:
        raise ValueError(f"{name}: min must be <= max")
    return (lo, hi)


def every_pool(times: tuple[float, float]) -> dict[str, tuple[float, float]]:
    from simulator.models import POOLS

    return dict.fromkeys(POOLS, times)


def _gen_times(name: str, v: Any) -> dict[str, tuple[float, float]]:
    from simulator.models import POOLS

    if not isinstance(v, dict) or not set(v) <= set(POOLS):
        raise ValueError(f"{name} must map pools ({', '.join(POOLS)}) to [min, max]")
    return {pool: _gen_time(f"{name}.{pool}", times) for pool, times in v.items()}


def _pool_limits(name: str, v: Any) -> dict[str, tuple[int, int]]:
    from simulator.models import POOLS

    if not isinstance(v, dict) or not set(v) <= set(POOLS) - {"text-to-video"}:
        raise ValueError(f"{name} must map pools other than text-to-video to [in_progress, per_window]")
    out = {}
    for pool, limits in v.items():
        if not isinstance(limits, list | tuple) or len(limits) != 2:
            raise ValueError(f"{name}.{pool} must be [in_progress, per_window]")
        out[pool] = (_positive_int(name, limits[0]) or 1, _positive_int(name, limits[1]) or 1)
    return out


def _images(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 6:
        raise ValueError(f"{name} must be an integer from 1 to 6")
    return v


def _credits(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValueError(f"{name} must be a number >= 0, or -1 (unlimited)")
    if v < 0 and v != UNLIMITED_CREDITS:
        raise ValueError(f"{name} must be a number >= 0, or -1 (unlimited)")
    return v


def credits_by_key(v: Any) -> float | dict[str, float]:
    """``credits`` of ``/__sim__/config``: one balance for every key, or ``{key_id: balance}``."""
    if isinstance(v, dict):
        return {str(key): _credits(f"credits.{key}", balance) for key, balance in v.items()}
    return _credits("credits", v)


def _words(name: str, v: Any) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(w, str) for w in v):
        raise ValueError(f"{name} must be a list of strings")
    return [w.lower() for w in v if w]


#: Fields ``/__sim__/config`` may change, with the parser that validates each value.
_RUNTIME_FIELDS: dict[str, Any] = {
    "max_in_progress": _positive_int,
    "max_per_window": _positive_int,
    "window_s": _positive,
    "record_info_per_s": _non_negative,
    "error_style": _style,
    "fail_rate": _probability,
    "maintenance": _bool,
    "gen_time": _gen_time,
    "gen_times": _gen_times,
    "pool_limits": _pool_limits,
    "create_rate": _positive_int,
    "create_rate_window_s": _positive,
    "images_per_task": _images,
    "upload_ttl_s": _positive,
    "callback_retries": _positive_int,
    "callback_backoff_s": _non_negative,
    "callback_timeout_s": _positive,
    "callback_duplicates": _probability,
    "url_ttl_s": _non_negative,
    "download_url_ttl_s": _non_negative,
    "video_bytes": _positive_int,
    "time_scale": _positive,
    "moderation_words": _words,
    "report_credits": _bool,
    "delay_s": _non_negative,
    "drop_callbacks": _bool,
    "file_rate_bytes_per_s": _non_negative,
}


def apply_overrides(options: SimOptions, changes: Mapping[str, Any]) -> list[str]:
    """Validate every change first, then apply them all; return the names changed.

    ``credits``, ``force_status`` are not options fields; the caller handles them.
    Raises ValueError naming the first bad field, leaving ``options`` untouched.
    """
    parsed: dict[str, Any] = {}
    for name, value in changes.items():
        if name in ("credits", "force_status"):
            continue
        parser = _RUNTIME_FIELDS.get(name)
        if parser is None:
            raise ValueError(f"unknown config field {name!r}")
        parsed[name] = parser(name, value)
    if "credits" in changes:
        credits_by_key(changes["credits"])
    for name, value in parsed.items():
        setattr(options, name, value)
    if "gen_time" in parsed and "gen_times" not in parsed:
        options.gen_times = every_pool(options.gen_time)  # one time for every model, as asked
    return list(parsed)


def runtime_value(name: str, value: Any) -> Any:
    """``value`` checked as ``/__sim__/config`` checks ``name`` (ValueError naming it otherwise)."""
    return _RUNTIME_FIELDS[name](name, value)


def validate_credits(v: Any) -> float | dict[str, float]:
    return credits_by_key(v)
