"""gRPC over TLS: a server certificate for every service, client certificates (mTLS) as an
option, and one way for every client (the CLI, tools) to open a channel.

Server side (``RuntimeSettings``): ``CHOREO_GRPC_TLS_CERT_FILE`` and ``CHOREO_GRPC_TLS_KEY_FILE``
turn TLS on; ``CHOREO_GRPC_TLS_CLIENT_CA_FILE`` also requires every client to present a
certificate signed by that CA. Client side (environment): ``CHOREO_GRPC_TLS_CA_FILE`` trusts a
private CA, and ``CHOREO_GRPC_TLS_CLIENT_CERT_FILE`` / ``CHOREO_GRPC_TLS_CLIENT_KEY_FILE``
present a client certificate. With none of them set, gRPC is plaintext (loopback default).

``choreo up --tls`` (:func:`ensure_local_pki`) makes a private CA and a server certificate in
``<data dir>/tls/`` (with ``--mtls`` also a client certificate for the operator's tools), and
writes ``<data dir>/grpc-tls.json`` naming them while it runs. The command line reads that file
(:func:`adopt_system_tls`) when no ``CHOREO_GRPC_TLS_*`` client variable is set, so
``choreo order``, ``choreo status`` and the other tools speak TLS to the system without flags.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc

from choreo.errors import ConfigurationError
from choreo.settings import RuntimeSettings
from choreo.tracing import recording


def _read(path: str, what: str, variable: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigurationError(
            f"{what} {path} cannot be read ({exc.strerror}): fix or unset {variable}"
        ) from None


def server_credentials(settings: RuntimeSettings) -> grpc.ServerCredentials | None:
    """TLS credentials for a service's gRPC server, or None for plaintext."""
    if not settings.grpc_tls_cert_file and not settings.grpc_tls_key_file:
        if settings.grpc_tls_client_ca_file:
            raise ConfigurationError(
                "CHOREO_GRPC_TLS_CLIENT_CA_FILE needs CHOREO_GRPC_TLS_CERT_FILE and"
                " CHOREO_GRPC_TLS_KEY_FILE: client certificates only make sense over TLS"
            )
        return None
    if not (settings.grpc_tls_cert_file and settings.grpc_tls_key_file):
        raise ConfigurationError(
            "set both CHOREO_GRPC_TLS_CERT_FILE and CHOREO_GRPC_TLS_KEY_FILE, or neither"
        )
    cert = _read(settings.grpc_tls_cert_file, "gRPC certificate", "CHOREO_GRPC_TLS_CERT_FILE")
    key = _read(settings.grpc_tls_key_file, "gRPC private key", "CHOREO_GRPC_TLS_KEY_FILE")
    client_ca = None
    if settings.grpc_tls_client_ca_file:
        client_ca = _read(
            settings.grpc_tls_client_ca_file, "client CA", "CHOREO_GRPC_TLS_CLIENT_CA_FILE"
        )
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def client_credentials(environ: Mapping[str, str] | None = None) -> grpc.ChannelCredentials | None:
    """Channel credentials from the ``CHOREO_GRPC_TLS_*`` client variables, or None."""
    env = os.environ if environ is None else environ
    ca_file = env.get("CHOREO_GRPC_TLS_CA_FILE", "")
    cert_file = env.get("CHOREO_GRPC_TLS_CLIENT_CERT_FILE", "")
    key_file = env.get("CHOREO_GRPC_TLS_CLIENT_KEY_FILE", "")
    if not (ca_file or cert_file or key_file):
        return None
    if bool(cert_file) != bool(key_file):
        raise ConfigurationError(
            "set both CHOREO_GRPC_TLS_CLIENT_CERT_FILE and CHOREO_GRPC_TLS_CLIENT_KEY_FILE,"
            " or neither"
        )
    ca = _read(ca_file, "CA certificate", "CHOREO_GRPC_TLS_CA_FILE") if ca_file else None
    cert = (
        _read(cert_file, "client certificate", "CHOREO_GRPC_TLS_CLIENT_CERT_FILE")
        if cert_file
        else None
    )
    key = _read(key_file, "client key", "CHOREO_GRPC_TLS_CLIENT_KEY_FILE") if key_file else None
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


def open_channel(address: str, environ: Mapping[str, str] | None = None) -> grpc.aio.Channel:
    """A channel to ``address``: TLS when the client variables say so, else plaintext; traced
    (a CLIENT span whose context the server continues) when an OpenTelemetry SDK is on."""
    interceptors = None
    if recording():
        try:  # the 'otlp' extra; without it the call is simply not traced
            from opentelemetry.instrumentation.grpc import aio_client_interceptors
        except ImportError:
            pass
        else:
            interceptors = aio_client_interceptors()
    credentials = client_credentials(environ)
    if credentials is None:
        return grpc.aio.insecure_channel(address, interceptors=interceptors)
    return grpc.aio.secure_channel(address, credentials, interceptors=interceptors)


CLIENT_VARIABLES = (
    "CHOREO_GRPC_TLS_CA_FILE",
    "CHOREO_GRPC_TLS_CLIENT_CERT_FILE",
    "CHOREO_GRPC_TLS_CLIENT_KEY_FILE",
)
TLS_FOLDER = "tls"
SYSTEM_TLS_FILE = "grpc-tls.json"
CERT_DAYS = 365


@dataclass(frozen=True)
class LocalPki:
    """The files of a data folder's private CA: what servers present and clients trust."""

    ca_file: Path
    server_cert_file: Path
    server_key_file: Path
    client_cert_file: Path
    client_key_file: Path

    def server_environ(self, mutual: bool) -> dict[str, str]:
        """The ``CHOREO_GRPC_TLS_*`` server variables of a service."""
        env = {
            "CHOREO_GRPC_TLS_CERT_FILE": str(self.server_cert_file),
            "CHOREO_GRPC_TLS_KEY_FILE": str(self.server_key_file),
        }
        if mutual:
            env["CHOREO_GRPC_TLS_CLIENT_CA_FILE"] = str(self.ca_file)
        return env

    def client_environ(self, mutual: bool) -> dict[str, str]:
        """The client variables of a tool that talks to those services."""
        env = {"CHOREO_GRPC_TLS_CA_FILE": str(self.ca_file)}
        if mutual:
            env["CHOREO_GRPC_TLS_CLIENT_CERT_FILE"] = str(self.client_cert_file)
            env["CHOREO_GRPC_TLS_CLIENT_KEY_FILE"] = str(self.client_key_file)
        return env


def _write_private(path: Path, data: bytes) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_bytes(data)


def _still_valid(cert_file: Path, hosts: tuple[str, ...]) -> bool:
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (OSError, ValueError):
        return False
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    if cert.not_valid_after_utc < soon:
        return False
    if not hosts:
        return True
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    present = {str(n) for n in names.get_values_for_type(x509.DNSName)}
    present |= {str(n) for n in names.get_values_for_type(x509.IPAddress)}
    return all(host in present for host in hosts)


def ensure_local_pki(data_dir: Path, hosts: tuple[str, ...] = ()) -> LocalPki:
    """A private CA with a server certificate for loopback (and ``hosts``) and a client
    certificate, in ``<data_dir>/tls/``; made once and reused while valid (keys mode 0600)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder = (data_dir / TLS_FOLDER).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    pki = LocalPki(
        ca_file=folder / "ca.crt",
        server_cert_file=folder / "server.crt",
        server_key_file=folder / "server.key",
        client_cert_file=folder / "client.crt",
        client_key_file=folder / "client.key",
    )
    names = ("localhost", "127.0.0.1", "::1", *hosts)
    ca_key_file = folder / "ca.key"
    if (
        all(path.exists() for path in (*asdict(pki).values(), ca_key_file))
        and _still_valid(pki.ca_file, ())
        and _still_valid(pki.server_cert_file, names)
        and _still_valid(pki.client_cert_file, ())
    ):
        return pki

    def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    now = datetime.datetime.now(datetime.UTC)

    def builder(subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey) -> Any:
        return (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name(f"choreo local CA {data_dir.resolve()}"[:64])
    ca_cert = (
        builder(ca_name.rfc4514_string().removeprefix("CN="), ca_name, ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    alt_names: list[x509.GeneralName] = []
    for host in dict.fromkeys(names):
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        builder("choreo services", ca_name, server_key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client_cert = (
        builder("choreo operator", ca_name, client_key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    _write_private(ca_key_file, pem_key(ca_key))
    _write_private(pki.server_key_file, pem_key(server_key))
    _write_private(pki.client_key_file, pem_key(client_key))
    pki.ca_file.write_bytes(ca_cert.public_bytes(pem))
    pki.server_cert_file.write_bytes(server_cert.public_bytes(pem))
    pki.client_cert_file.write_bytes(client_cert.public_bytes(pem))
    return pki


def write_system_tls(data_dir: Path, client_env: Mapping[str, str]) -> Path:
    """Name the running system's client TLS files for the command line (paths only)."""
    path = data_dir / SYSTEM_TLS_FILE
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(dict(client_env), indent=2) + "\n")
    temporary.replace(path)
    return path


def remove_system_tls(data_dir: Path) -> None:
    (data_dir / SYSTEM_TLS_FILE).unlink(missing_ok=True)


def system_tls(data_dir: Path) -> dict[str, str]:
    """The client variables ``choreo up --tls`` wrote for ``data_dir``, or {} (plaintext)."""
    try:
        data = json.loads((data_dir / SYSTEM_TLS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): str(v) for k, v in data.items() if k in CLIENT_VARIABLES and v}


def adopt_system_tls(data_dir: Path, environ: os._Environ[str] | None = None) -> bool:
    """Use the running system's TLS files unless a client variable is already set; True if
    it did. Called by the command line before any tool opens a channel."""
    env = os.environ if environ is None else environ
    if any(env.get(name) for name in CLIENT_VARIABLES):
        return False
    found = system_tls(data_dir)
    env.update(found)
    return bool(found)
