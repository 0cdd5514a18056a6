"""Run the simulator: bind, announce the address on stdout, serve until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal
import sys

from aiohttp import web

from simulator.app import build_app
from simulator.arguments import parse_args
from simulator.options import SimOptions
from simulator.state import SimState

READY_PREFIX = "simulator listening on "


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


async def serve(options: SimOptions, stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (or a SIGTERM/SIGINT arrives when ``stop`` is None)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    state = SimState(options)
    runner = web.AppRunner(build_app(state), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, options.host, options.port, backlog=2048)
        await site.start()
        port = runner.addresses[0][1]
        options.port = port
        if options.result_base_url is None:
            state.base_url = f"http://{_url_host(options.host)}:{port}"
        host = f"[{options.host}]" if ":" in options.host else options.host
        sys.stdout.write(f"{READY_PREFIX}http://{host}:{port}\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def main(argv: list[str] | None = None) -> None:
    """CLI entry: ``python -m simulator [flags]`` and ``imagineq simulator [flags]``."""
    options = parse_args(argv)
    asyncio.run(serve(options))
