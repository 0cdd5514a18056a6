"""``make run``: the whole Procfile under honcho, against a private Redis, S3 server and the simulator.

Starts the backing services with :class:`~devstack.services.LocalStack` (free ports, stopped at the
end), writes an env file with the ``IMAGINEQ_*`` settings pointing at them (plus ``PORT`` for ``web``,
``FLOWER_*``, a random ingress token and Flower password), then runs::

    honcho start -f Procfile -e ENV_FILE web submit poll store notify beat flower

The simulator is started here on a free port rather than through honcho (the Procfile's ``simulator``
entry binds the fixed port 8900). Upstream callbacks go to the ``web`` process.

What it stores outlives it: Redis (with its append-only file: jobs, batches, queues, quota state), the
S3 server's objects (and its credentials) and Flower's database live under ``var/run/`` in the checkout
(git-ignored), so the next ``make run`` picks up where this one stopped. ``--data-dir`` puts them
elsewhere; ``rm -rf var/run`` starts afresh. Logs go to ``var/run/logs/``.

Ctrl-C (or SIGTERM) stops honcho — which sends SIGTERM to every process (Celery shuts down warm) and
SIGKILLs what is left after 5 s — then the services; the env file is removed. While it runs, the CLI
works against it with the same environment::

    set -a; . /tmp/imagineq-run.env; set +a
    imagineq submit "A red fox trots through fresh snow" --wait
    imagineq status
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from config.settings import load_settings
from devstack import services
from devstack.services import LocalStack

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = ("web", "submit", "poll", "store", "notify", "beat", "flower")
DEFAULT_ENV_FILE = Path(tempfile.gettempdir()) / "imagineq-run.env"
DEFAULT_DATA_DIR = ROOT / "var" / "run"
FLOWER_DEFAULT_PORT = 5555
#: How long honcho gets to stop its processes (it SIGKILLs them itself after 5 s).
HONCHO_STOP_S = 30.0


def _port(wanted: int | None, preferred: int | None = None) -> int:
    if wanted:
        return wanted
    if preferred is not None:
        with contextlib.suppress(OSError), socket.create_server(("127.0.0.1", preferred)):
            return preferred
    return services.free_port()


def write_env_file(path: Path, env: Mapping[str, str]) -> None:
    """``KEY='value'`` lines that honcho, python-dotenv and a POSIX shell all read alike; mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("# written by `make run` (devstack/run.py); removed when it stops\n")
        for name, value in env.items():
            handle.write(f"{name}={shlex.quote(value)}\n")


def honcho_argv(env_file: Path, processes: Sequence[str] = PROCESSES) -> list[str]:
    honcho = Path(sys.executable).with_name("honcho")
    return [str(honcho), "start", "-f", str(ROOT / "Procfile"), "-d", str(ROOT), "-e", str(env_file), *processes]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--env-file", type=Path, default=DEFAULT_ENV_FILE, help=f"(default {DEFAULT_ENV_FILE})")
    parser.add_argument("--web-port", type=int, default=None, help="port of web (default: a free one)")
    parser.add_argument("--flower-port", type=int, default=None, help="default 5555 if free, else a free one")
    parser.add_argument("--simulator-args", default="", help='extra simulator options, e.g. "--gen-time 3:8"')
    parser.add_argument(
        "--data-dir", type=Path, default=DEFAULT_DATA_DIR, help=f"kept across runs (default {DEFAULT_DATA_DIR})"
    )
    args = parser.parse_args(argv)
    data_dir: Path = args.data_dir.resolve()
    kept = (data_dir / "redis").exists()
    (data_dir / "logs").mkdir(parents=True, exist_ok=True)

    with services.terminate_on_signals(), LocalStack(data_dir / "logs") as stack:
        print(f"starting Redis, S3 server and simulator (logs in {stack.log_dir}) ...", flush=True)
        redis_url = stack.redis(None, appendonly=True, data_dir=data_dir / "redis")  # always a private one
        s3 = stack.s3(data_dir / "s3")
        simulator = stack.simulator(shlex.split(args.simulator_args))
        web_port = _port(args.web_port)
        flower_port = _port(args.flower_port, FLOWER_DEFAULT_PORT)
        flower_auth = os.environ.get("FLOWER_BASIC_AUTH") or f"admin:{secrets.token_urlsafe(12)}"
        env = services.deployment_env(
            redis_url=redis_url,
            s3=s3,
            simulator_url=simulator.url,
            extra={
                "IMAGINEQ_CALLBACKS__PUBLIC_BASE_URL": f"http://127.0.0.1:{web_port}",
                "IMAGINEQ_INGRESS_TOKENS": f'["{secrets.token_urlsafe(24)}"]',
                "IMAGINEQ_OPS_TOKENS": f'["{secrets.token_urlsafe(24)}"]',
                "IMAGINEQ_DOCS_ENABLED": "true",
                "PORT": str(web_port),
                "FLOWER_PORT": str(flower_port),
                "FLOWER_BASIC_AUTH": flower_auth,
                "FLOWER_DB": str(data_dir / "flower.db"),
            },
        )
        os.environ.update(env)  # for the settings below; honcho gets them from the env file too
        from workers.storage import Storage

        settings = load_settings()
        Storage(settings.s3, settings.http).ensure_bucket()  # never downloads: no result hosts needed
        write_env_file(args.env_file, env)
        stack.callback(lambda: args.env_file.unlink(missing_ok=True))
        print(
            f"\n  web       http://127.0.0.1:{web_port}   (ingress and ops tokens in the env file; /docs)\n"
            f"  flower    http://127.0.0.1:{flower_port}   (user {flower_auth.split(':')[0]}; password: env file)\n"
            f"  simulator {simulator.url}\n"
            f"  env file  {args.env_file}\n"
            f"  data      {data_dir} ({'kept from the last run' if kept else 'new'}: Redis AOF, S3 objects, "
            f"Flower's DB; kept when this stops; rm -rf it to start afresh)\n\n"
            f"  CLI:      set -a; . {args.env_file}; set +a; imagineq status\n",
            flush=True,
        )
        bin_dir = str(Path(sys.executable).parent)
        process_env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
        honcho = subprocess.Popen(honcho_argv(args.env_file), cwd=ROOT, env=process_env, stdin=subprocess.DEVNULL)
        try:
            code = honcho.wait()
        except KeyboardInterrupt:
            print("\nstopping ...", flush=True)
            return _stop(honcho)
        # honcho stopping everything on a Ctrl-C it received itself is the way make run ends: not a failure.
        return 0 if code in (130, -signal.SIGINT) else code


def _stop(honcho: subprocess.Popen[bytes]) -> int:
    """SIGTERM honcho once (a terminal's Ctrl-C may already have reached it: it stops only once)."""
    if honcho.poll() is None:
        honcho.send_signal(signal.SIGTERM)
    try:
        honcho.wait(timeout=HONCHO_STOP_S)
    except subprocess.TimeoutExpired:
        honcho.kill()
        honcho.wait(timeout=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
