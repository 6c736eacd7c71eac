"""gRPC over TLS: a server certificate for every service, client certificates (mTLS) as an
option, and one way for every client (the CLI, tools) to open a channel.

Server side (``RuntimeSettings``): ``CHOREO_GRPC_TLS_CERT_FILE`` and ``CHOREO_GRPC_TLS_KEY_FILE``
turn TLS on; ``CHOREO_GRPC_TLS_CLIENT_CA_FILE`` also requires every client to present a
certificate signed by that CA. Client side (environment): ``CHOREO_GRPC_TLS_CA_FILE`` trusts a
private CA, and ``CHOREO_GRPC_TLS_CLIENT_CERT_FILE`` / ``CHOREO_GRPC_TLS_CLIENT_KEY_FILE``
present a client certificate. With none of them set, gRPC is plaintext (loopback default).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

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
        from opentelemetry.instrumentation.grpc import aio_client_interceptors

        interceptors = aio_client_interceptors()
    credentials = client_credentials(environ)
    if credentials is None:
        return grpc.aio.insecure_channel(address, interceptors=interceptors)
    return grpc.aio.secure_channel(address, credentials, interceptors=interceptors)
