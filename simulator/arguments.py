"""The simulator's command line: every flag, its default from :class:`~simulator.options.SimOptions`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from simulator.options import UNLIMITED_CREDITS, SimOptions, every_pool, runtime_value


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _parse_gen_time(text: str) -> tuple[float, float]:
    try:
        lo_s, _, hi_s = text.partition(":")
        lo = float(lo_s)
        hi = float(hi_s) if hi_s else lo
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX seconds, got {text!r}") from e
    if lo < 0 or hi < lo:
        raise argparse.ArgumentTypeError(f"expected 0 <= MIN <= MAX, got {text!r}")
    return (lo, hi)


_EPILOG = """\
time scale:
  wall seconds = simulated seconds / --time-scale, for --gen-time, --window-s, --url-ttl-s,
  --download-url-ttl-s, --callback-backoff-s and the Retry-After header (which is in wall
  seconds, rounded up, >= 1). --callback-timeout-s and the delay_s fault are wall seconds.
  createTime/completeTime/updateTime are real epoch milliseconds; costTime is the drawn
  generation time in simulated milliseconds.

launch contract:
  once accepting connections, prints exactly one stdout line
  'simulator listening on http://HOST:PORT' (flushed); SIGTERM/SIGINT stop it with exit 0.

control endpoints (no auth):
  GET /__sim__/stats, GET /__sim__/tasks, POST /__sim__/reset, GET|POST /__sim__/config,
  GET /__sim__/files/{taskId}/sha256
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m simulator",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_EPILOG,
        description=(
            "Local stand-in for the Apikley market API (grok-imagine/text-to-video). "
            "Prints 'simulator listening on http://HOST:PORT' once ready. "
            "Durations marked (simulated) are divided by --time-scale to get wall seconds."
        ),
    )
    d = SimOptions()
    a = p.add_argument
    a("--host", default=d.host, help="interface to bind (default %(default)s)")
    a("--port", type=int, default=d.port, help="port; 0 picks a free one (default %(default)s)")
    a(
        "--api-key",
        dest="api_keys",
        action="append",
        metavar="KEY",
        help="accepted Bearer key; repeat for several accounts, each with its own quotas "
        "and credits (default: sim-key)",
    )
    a(
        "--max-in-progress",
        type=int,
        default=d.max_in_progress,
        metavar="N",
        help="tasks not yet terminal per key before createTask answers 429 (default %(default)s)",
    )
    a(
        "--max-per-window",
        type=int,
        default=d.max_per_window,
        metavar="N",
        help="creations per key per rolling window before 429 (default %(default)s)",
    )
    a(
        "--window-s",
        type=float,
        default=d.window_s,
        metavar="S",
        help="rolling creation window, simulated seconds (default %(default)s)",
    )
    a(
        "--record-info-per-s",
        type=float,
        default=d.record_info_per_s,
        metavar="N",
        help="recordInfo calls per key in any rolling (simulated) second before 429; 0 = unlimited "
        "(default %(default)s)",
    )
    a(
        "--credits",
        type=float,
        default=d.credits,
        metavar="N",
        help="credits per key; each task takes its model's price (video 2.4/s at 480p, 4.5/s at 720p, an image 4, "
        "an upscale 10 or 30), and one the balance cannot pay is refused 402; -1 = unlimited (default %(default)s)",
    )
    a("--report-credits", action="store_true", help="recordInfo reports each task's consumeCredits")
    a("--maintenance", action="store_true", help="answer every API call with 455")
    a(
        "--gen-time",
        type=_parse_gen_time,
        default=None,
        metavar="MIN:MAX",
        help="generation time of every model, uniform, simulated seconds (default: each model's documented "
        "time, 10:25 for text-to-video). First 10%% of it the task is 'waiting', next 10%% 'queuing', "
        "then 'generating'",
    )
    a(
        "--gen-times",
        type=_json_object,
        default={},
        metavar="JSON",
        help="generation time per model pool, e.g. '{\"text-to-image\": [1, 2]}' (after --gen-time)",
    )
    a(
        "--pool-limits",
        type=_json_object,
        default={},
        metavar="JSON",
        help="[in_progress, per_window] per key for the pools other than text-to-video, e.g. "
        "'{\"image-to-video\": [25, 250]}' (default: each model's documented limits)",
    )
    a(
        "--create-rate",
        type=int,
        default=d.create_rate,
        metavar="N",
        help="createTask requests per key per --create-rate-window-s before 429; 0 = unlimited (default %(default)s)",
    )
    a(
        "--create-rate-window-s",
        type=float,
        default=d.create_rate_window_s,
        metavar="S",
        help="the rolling window of --create-rate, simulated seconds (default %(default)s)",
    )
    a(
        "--images-per-task",
        type=int,
        default=d.images_per_task,
        metavar="N",
        help="images one text-to-image task returns, 1 to 6 (default %(default)s)",
    )
    a(
        "--fail-rate",
        type=float,
        default=d.fail_rate,
        metavar="P",
        help="fraction of tasks ending in state fail, failCode 500 (default %(default)s)",
    )
    a(
        "--moderation-words",
        default=",".join(d.moderation_words),
        metavar="W1,W2",
        help="prompts containing any of these words (case-insensitive) end in state fail with "
        "failCode 'content_moderation' (default %(default)s; empty string disables)",
    )
    a(
        "--error-style",
        choices=["envelope", "http"],
        default=d.error_style,
        help="envelope: HTTP 200 + body code; http: HTTP status mirrors the code (default %(default)s)",
    )
    a(
        "--hmac-key",
        default=None,
        metavar="KEY",
        help="sign callbacks: X-Webhook-Timestamp (unix s) and X-Webhook-Signature = "
        "base64(HMAC-SHA256(key, taskId + '.' + timestamp))",
    )
    a(
        "--callback-retries",
        type=int,
        default=d.callback_retries,
        metavar="N",
        help="retries after a failed callback delivery (default %(default)s)",
    )
    a(
        "--callback-timeout-s",
        type=float,
        default=d.callback_timeout_s,
        metavar="S",
        help="per-attempt callback timeout, wall seconds (default %(default)s)",
    )
    a(
        "--callback-backoff-s",
        type=float,
        default=d.callback_backoff_s,
        metavar="S",
        help="first retry delay, doubled each retry, simulated seconds (default %(default)s)",
    )
    a(
        "--callback-duplicates",
        type=float,
        default=d.callback_duplicates,
        metavar="RATE",
        help="probability that a delivered callback is sent a second time (default %(default)s)",
    )
    a(
        "--url-ttl-s",
        type=float,
        default=d.url_ttl_s,
        metavar="S",
        help="result URL lifetime after completion, simulated seconds (default %(default)s)",
    )
    a(
        "--download-url-ttl-s",
        type=float,
        default=d.download_url_ttl_s,
        metavar="S",
        help="lifetime of URLs from common/download-url, simulated seconds (default %(default)s)",
    )
    a(
        "--video-bytes",
        type=int,
        default=d.video_bytes,
        metavar="N",
        help="serve files of N pseudo-random bytes (an ftyp box, then noise) instead of the playable "
        "MP4 clips of each aspect ratio and mode, for size-driven benchmarks (default 0: clips)",
    )
    a(
        "--time-scale",
        type=float,
        default=d.time_scale,
        metavar="X",
        help="divide every simulated duration by X (default %(default)s)",
    )
    a("--seed", type=int, default=None, metavar="N", help="seed for reproducible randomness")
    a(
        "--admin",
        action="store_true",
        help="serve the unauthenticated /__sim__ controls (stats, tasks with their callback URLs, config)",
    )
    a(
        "--result-base-url",
        default=None,
        metavar="URL",
        help="base of result file URLs (default http://HOST:PORT, 127.0.0.1 for wildcard hosts)",
    )
    return p


def parse_args(argv: list[str] | None = None) -> SimOptions:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.time_scale <= 0:
        parser.error("--time-scale must be > 0")
    for name in ("fail_rate", "callback_duplicates"):
        if not 0 <= getattr(ns, name) <= 1:
            parser.error(f"--{name.replace('_', '-')} must be between 0 and 1")
    if ns.credits < 0 and ns.credits != UNLIMITED_CREDITS:
        parser.error("--credits must be >= 0, or -1 (unlimited)")
    if ns.window_s <= 0:
        parser.error("--window-s must be > 0")
    if ns.record_info_per_s < 0:
        parser.error("--record-info-per-s must be >= 0")
    gen_times = every_pool(ns.gen_time) if ns.gen_time is not None else {}
    try:
        gen_times.update(runtime_value("gen_times", ns.gen_times))
        pool_limits = runtime_value("pool_limits", ns.pool_limits)
        images = runtime_value("images_per_task", ns.images_per_task)
        create_rate = runtime_value("create_rate", ns.create_rate)
        create_rate_window_s = runtime_value("create_rate_window_s", ns.create_rate_window_s)
    except ValueError as error:
        parser.error(str(error))
    return SimOptions(
        host=ns.host,
        port=ns.port,
        api_keys=ns.api_keys or ["sim-key"],
        max_in_progress=ns.max_in_progress,
        max_per_window=ns.max_per_window,
        window_s=ns.window_s,
        record_info_per_s=ns.record_info_per_s,
        credits=int(ns.credits) if float(ns.credits).is_integer() else ns.credits,
        report_credits=ns.report_credits,
        maintenance=ns.maintenance,
        gen_time=ns.gen_time or SimOptions().gen_time,
        gen_times=gen_times,
        pool_limits=pool_limits,
        images_per_task=images,
        create_rate=create_rate,
        create_rate_window_s=create_rate_window_s,
        fail_rate=ns.fail_rate,
        moderation_words=[w.strip().lower() for w in ns.moderation_words.split(",") if w.strip()],
        error_style=ns.error_style,
        hmac_key=ns.hmac_key,
        callback_retries=ns.callback_retries,
        callback_timeout_s=ns.callback_timeout_s,
        callback_backoff_s=ns.callback_backoff_s,
        callback_duplicates=ns.callback_duplicates,
        url_ttl_s=ns.url_ttl_s,
        download_url_ttl_s=ns.download_url_ttl_s,
        video_bytes=ns.video_bytes,
        time_scale=ns.time_scale,
        seed=ns.seed,
        result_base_url=ns.result_base_url,
        admin=ns.admin,
    )
