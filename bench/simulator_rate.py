"""How many API calls per second the simulator answers.

Starts ``python -m simulator`` with unlimited quotas and instant generation (or uses ``--url``),
then hammers createTask + recordInfo from several client processes, each running many aiohttp
loops, for ``--duration`` seconds. Last line: ``RESULT create_per_s=… record_info_per_s=… total_per_s=…``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
READY = "simulator listening on "
KEY = "bench-key"
BODY = {"model": "grok-imagine/text-to-video", "input": {"prompt": "a benchmark of doors opening"}}


async def _client(url: str, duration_s: float, concurrency: int) -> tuple[int, int, int]:
    creates = records = errors = 0
    deadline = time.monotonic() + duration_s
    headers = {"Authorization": f"Bearer {KEY}", "User-Agent": "imagineq-bench/1.0"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def loop() -> None:
            nonlocal creates, records, errors
            while time.monotonic() < deadline:
                async with session.post(f"{url}/api/v1/jobs/createTask", json=BODY) as r:
                    payload = await r.json()
                if payload["code"] != 200:
                    errors += 1
                    continue
                creates += 1
                task_id = payload["data"]["taskId"]
                async with session.get(f"{url}/api/v1/jobs/recordInfo", params={"taskId": task_id}) as r:
                    payload = await r.json()
                if payload["code"] == 200:
                    records += 1
                else:
                    errors += 1

        await asyncio.gather(*(loop() for _ in range(concurrency)))
    return creates, records, errors


def _client_process(url: str, duration_s: float, concurrency: int) -> tuple[int, int, int]:
    return asyncio.run(_client(url, duration_s, concurrency))


def _start_simulator() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simulator",
            "--port",
            "0",
            "--api-key",
            KEY,
            "--gen-time",
            "0:0",
            "--max-in-progress",
            "1000000000",
            "--max-per-window",
            "1000000000",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 15)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith(READY):
        proc.kill()
        raise SystemExit(f"simulator did not start: {line!r}")
    return proc, line[len(READY) :].strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent loops per process")
    parser.add_argument("--url", default=None, help="use a running simulator (key must be bench-key)")
    args = parser.parse_args()

    proc: subprocess.Popen[str] | None = None
    url = args.url
    if url is None:
        proc, url = _start_simulator()
    try:
        print(f"simulator {url}: {args.procs} processes x {args.concurrency} loops, {args.duration_s} s")
        start = time.monotonic()
        with multiprocessing.Pool(args.procs) as pool:
            results = pool.starmap(_client_process, [(url, args.duration_s, args.concurrency)] * args.procs)
        elapsed = time.monotonic() - start
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
    creates = sum(r[0] for r in results)
    records = sum(r[1] for r in results)
    errors = sum(r[2] for r in results)
    print(f"creates={creates} record_infos={records} errors={errors} elapsed_s={elapsed:.1f}")
    print(
        f"RESULT create_per_s={creates / elapsed:.0f} record_info_per_s={records / elapsed:.0f} "
        f"total_per_s={(creates + records) / elapsed:.0f}"
    )


if __name__ == "__main__":
    main()
