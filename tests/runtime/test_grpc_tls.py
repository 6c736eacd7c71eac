"""gRPC over TLS, and mutual TLS, on a real service (the probe, on the runtime's test contracts):
certificates from a private CA made here."""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from choreo.broker import EmbeddedBroker, free_port
from choreo.errors import ConfigurationError
from choreo.grpc_tls import open_channel, server_credentials
from choreo.service import ServiceRuntime
from choreo.settings import RuntimeSettings
from tests import testkit
from tests.runtime import probe

pytestmark = pytest.mark.usefixtures("testkit_contracts")
REPO = Path(__file__).resolve().parents[2]


def runtime_settings(name: str, broker: EmbeddedBroker, tmp_path: Path) -> RuntimeSettings:
    return RuntimeSettings(
        service=name,
        nats_url=broker.url,
        database_url=f"sqlite:///{tmp_path}/{name}.db",
        grpc_port=0,
        fetch_timeout_s=0.2,
        relay_sweep_interval_s=0.2,
        backoff_base_s=0.05,
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer if issuer else (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(
    folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    (folder / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue("choreo test CA", ca_key, None, ca=True)
    _write(folder, "ca", ca_cert, ca_key)
    for name in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        _write(folder, name, _issue(name, key, (ca_cert.subject, ca_key)), key)
    return folder


async def started(settings: RuntimeSettings) -> ServiceRuntime:
    runtime = ServiceRuntime(probe.build(settings), settings)
    await runtime.start()
    return runtime


async def health_status(address: str, env: dict[str, str]) -> int:
    async with open_channel(address, env) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=3
        )
    return int(reply.status)


@pytest.fixture
async def tls_service(
    broker: EmbeddedBroker, tmp_path: Path, pki: Path, request: pytest.FixtureRequest
) -> AsyncIterator[ServiceRuntime]:
    settings = runtime_settings("probe", broker, tmp_path).with_(
        grpc_tls_cert_file=str(pki / "server.crt"),
        grpc_tls_key_file=str(pki / "server.key"),
        grpc_tls_client_ca_file=str(pki / "ca.crt") if request.param == "mtls" else "",
    )
    runtime = await started(settings)
    yield runtime
    await runtime.stop()


@pytest.mark.parametrize("tls_service", ["tls"], indirect=True)
async def test_a_service_serves_grpc_over_tls_only(tls_service: ServiceRuntime, pki: Path) -> None:
    address = f"127.0.0.1:{tls_service.grpc_port}"
    trusted = {"CHOREO_GRPC_TLS_CA_FILE": str(pki / "ca.crt")}
    assert await health_status(address, trusted) == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as plaintext:
        await health_status(address, {})
    assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("tls_service", ["mtls"], indirect=True)
async def test_mutual_tls_refuses_a_client_without_a_certificate(
    tls_service: ServiceRuntime, pki: Path
) -> None:
    address = f"127.0.0.1:{tls_service.grpc_port}"
    ca_only = {"CHOREO_GRPC_TLS_CA_FILE": str(pki / "ca.crt")}
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await health_status(address, ca_only)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    with_cert = {
        **ca_only,
        "CHOREO_GRPC_TLS_CLIENT_CERT_FILE": str(pki / "client.crt"),
        "CHOREO_GRPC_TLS_CLIENT_KEY_FILE": str(pki / "client.key"),
    }
    assert await health_status(address, with_cert) == health_pb2.HealthCheckResponse.SERVING


def test_half_a_tls_configuration_says_what_is_missing(pki: Path) -> None:
    with pytest.raises(ConfigurationError, match="CHOREO_GRPC_TLS_KEY_FILE"):
        server_credentials(RuntimeSettings(grpc_tls_cert_file=str(pki / "server.crt")))
    with pytest.raises(ConfigurationError, match="cannot be read"):
        server_credentials(
            RuntimeSettings(grpc_tls_cert_file="/nonexistent.crt", grpc_tls_key_file="/x.key")
        )


@pytest.mark.parametrize("tls_service", ["mtls"], indirect=True)
def test_a_second_server_on_the_port_of_a_running_one_fails_to_bind(
    tls_service: ServiceRuntime, broker: EmbeddedBroker, pki: Path, tmp_path: Path
) -> None:
    """gRPC's default SO_REUSEPORT let a second ``choreo serve`` bind the port of a running
    mTLS server, and the kernel shared the connections between them: plaintext clients
    without a certificate were served on the "mTLS" port."""
    outside = {k: v for k, v in os.environ.items() if not k.startswith("CHOREO_")}
    env = testkit.subprocess_env(outside)  # the probe's contracts, and no other CHOREO_*
    env |= {
        "CHOREO_NATS_URL": broker.url,
        "CHOREO_DATABASE_URL": f"sqlite:///{tmp_path}/second.db",
        "CHOREO_DATA_DIR": str(tmp_path),
        "CHOREO_GRPC_HOST": "127.0.0.1",
        "CHOREO_GRPC_PORT": str(tls_service.grpc_port),
        "CHOREO_METRICS_PORT": str(free_port()),
        # The second one without TLS at all: it must not get any of the port's connections.
    }
    second = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "choreo.cli",
            "serve",
            "probe",
            "--app",
            "tests.runtime.probe:build",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = second.communicate(timeout=60)
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
    assert second.returncode == 2, out
    assert f"cannot listen for gRPC on 127.0.0.1:{tls_service.grpc_port}" in out, out
