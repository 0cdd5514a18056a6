"""A TCP proxy that delays what passes through it, for the network-fault harness (as toxiproxy does).

    python -m devstack.netproxy --listen 198.18.0.11:6379 --to 127.0.0.1:6379 --config /path/latency.json

Every chunk read from one side is written to the other ``latency_ms`` ± ``jitter_ms`` later (uniform),
never before the chunk read ahead of it: a stream keeps its order, as TCP's does over a slow link. The
config file (``{"latency_ms": 100, "jitter_ms": 30}``; missing: no delay) is read again whenever it
changes, so a test turns latency on and off while connections stay open. Loss and partitions are not done
here: the harness drops packets with iptables in the hosts' namespaces, below TCP, where they belong.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

#: How often the config file is looked at for a change.
CONFIG_POLL_S: Final = 0.2
CHUNK: Final = 65536


@dataclass
class Delay:
    latency_ms: float = 0.0
    jitter_ms: float = 0.0

    def sample_s(self, rng: random.Random) -> float:
        spread = rng.uniform(-self.jitter_ms, self.jitter_ms) if self.jitter_ms else 0.0
        return max(0.0, self.latency_ms + spread) / 1000


class Proxy:
    def __init__(self, target: tuple[str, int], config: Path | None, seed: int | None = None) -> None:
        self.target = target
        self.config = config
        self.delay = Delay()
        self._mtime: float | None = None
        self._rng = random.Random(seed)

    def reload(self) -> None:
        if self.config is None:
            return
        try:
            mtime = self.config.stat().st_mtime
        except FileNotFoundError:
            self.delay, self._mtime = Delay(), None
            return
        if mtime == self._mtime:
            return
        with contextlib.suppress(OSError, ValueError, TypeError):
            values = json.loads(self.config.read_text())
            self.delay = Delay(float(values.get("latency_ms", 0)), float(values.get("jitter_ms", 0)))
            self._mtime = mtime

    async def watch(self) -> None:
        while True:
            self.reload()
            await asyncio.sleep(CONFIG_POLL_S)

    async def handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        pumps = [
            asyncio.ensure_future(self._pump(client_reader, server_writer)),
            asyncio.ensure_future(self._pump(server_reader, client_writer)),
        ]
        # Each direction ends at its EOF, passed on as a half-close; the connection ends when both have,
        # or at once when either breaks (a reset).
        pending = set(pumps)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(pump.cancelled() or pump.exception() is not None for pump in done):
                break
        for pump in pumps:
            pump.cancel()
        for writer in (client_writer, server_writer):
            with contextlib.suppress(Exception):
                writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read chunks as they come; a second task writes each at its due time, in order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.ensure_future(self._send(queue, writer))
        last_due = 0.0
        try:
            while True:
                chunk = await reader.read(CHUNK)
                due = max(last_due, time.monotonic() + self.delay.sample_s(self._rng))
                last_due = due
                await queue.put((due, chunk))
                if not chunk:
                    break
            await sender
        finally:
            sender.cancel()

    @staticmethod
    async def _send(queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter) -> None:
        while True:
            due, chunk = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not chunk:  # the other side closed: pass the half-close on
                with contextlib.suppress(OSError):
                    if writer.can_write_eof():
                        writer.write_eof()
                return
            writer.write(chunk)
            await writer.drain()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def serve(listen: tuple[str, int], proxy: Proxy) -> None:
    proxy.reload()
    server = await asyncio.start_server(proxy.handle, *listen, reuse_address=True)
    watcher = asyncio.ensure_future(proxy.watch())
    bound = server.sockets[0].getsockname()
    print(f"netproxy listening on {bound[0]}:{bound[1]} -> {proxy.target[0]}:{proxy.target[1]}", flush=True)
    try:
        async with server:
            await server.serve_forever()
    finally:
        watcher.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, type=_address, help="HOST:PORT (port 0: any free one)")
    parser.add_argument("--to", required=True, type=_address, help="HOST:PORT to forward to")
    parser.add_argument("--config", type=Path, help="JSON {latency_ms, jitter_ms}, read again when it changes")
    parser.add_argument("--seed", type=int, help="jitter's random seed")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.listen, Proxy(args.to, args.config, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
