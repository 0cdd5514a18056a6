"""Batch read and enqueue: a 100,000-line JSONL file into a private Redis, as a stream, in chunks.

Prints ``RESULT lines_per_s=… peak_rss_mb=…`` (goals: ≥ 2,000 lines/s, ≤ 300 MB). The file has long-ish
prompts, metadata on every line and 1% bad lines. Peak RSS is the process's high-water mark
(``ru_maxrss``) after the run, so it includes the interpreter and every imported library. A second submit
of the same file checks that nothing new is created.

Usage: ``python bench/batch.py [--lines N] [--redis-url URL]`` (default: a private redis-server).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from config.settings import load_settings  # noqa: E402
from devstack import services  # noqa: E402
from workers.batch.reader import BatchSubmitter  # noqa: E402


def write_file(path: Path, lines: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    words = [
        "a",
        "quiet",
        "harbour",
        "at",
        "dawn",
        "with",
        "fishing",
        "boats",
        "and",
        "gulls",
        "over",
        "calm",
        "water",
        "in",
        "soft",
        "light",
    ]
    with path.open("w") as handle:
        for i in range(lines):
            if i % 100 == 99:
                handle.write('{"prompt": "broken line\n' if i % 200 == 199 else '{"prompt": ""}\n')
                continue
            prompt = " ".join(rng.choice(words) for _ in range(rng.randint(20, 60)))
            line = {
                "id": f"row-{i}",
                "prompt": prompt,
                "aspect_ratio": rng.choice(["2:3", "3:2", "1:1"]),
                "metadata": {"row": i, "source": "bench"},
            }
            handle.write(json.dumps(line) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imagineq-bench-") as tmp, services.LocalStack(Path(tmp)) as stack:
        redis_url = stack.redis(args.redis_url)
        source = Path(tmp) / "bench.jsonl"
        write_file(source, args.lines)
        size_mb = source.stat().st_size / 1e6
        settings = load_settings(redis_url=redis_url, redis_prefix="bench", api_key="bench")
        submitter = BatchSubmitter(settings)
        try:
            started = time.perf_counter()
            result = submitter.submit(str(source))
            elapsed = time.perf_counter() - started
            again = submitter.submit(str(source))
            status = result.status
            peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            queued = sum(
                cast(int, submitter.redis.llen(key)) for key in submitter.redis.scan_iter("bench:celery:submit*")
            )
        finally:
            submitter.close()
    print(
        f"file: {args.lines:,} lines, {size_mb:.1f} MB; good {status.good:,}, bad {status.bad:,}, "
        f"jobs created {status.created:,}, submit messages {queued:,}; read again: "
        f"read={again.read} created={again.status.created:,}"
    )
    print(f"RESULT lines_per_s={status.lines / elapsed:.0f} peak_rss_mb={peak_mb:.0f}")
    ok = status.lines == args.lines and queued == status.good == status.created and not again.read
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
