"""Sealed fields: a value only the holder of one private key can read, carried as text.

A sender seals with the recipient's *public* key; every hop in between (other services, the
broker's streams, the dead-letter stream, a log) sees an opaque ``sealed:v1:...`` string. The
recipient opens it with its private key just before it needs the plaintext.

The scheme is HPKE (RFC 9180) in base mode: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and
ChaCha20-Poly1305, as ``cryptography`` implements it. Each seal uses a fresh ephemeral key, so
the same value sealed twice gives different text. The value is bound to a *purpose* (for the
payment token, the order it belongs to) through HPKE's ``info``: a sealed value copied into
another order's event does not open.

Keys are PEM files: the private key PKCS#8 (mode 0600), the public key SubjectPublicKeyInfo.
``openssl genpkey -algorithm X25519`` writes a compatible private key.

Rotation without a stop: the recipient opens with an :class:`OpeningKeys` ring (the new key
and the ones being retired), senders switch to the new public key, and the old private key is
dropped once nothing sealed with it can still arrive.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from choreo.extras import require

# Sealing is the 'sealing' extra: importing this module without it says how to install it.
require("cryptography.hazmat.primitives.hpke", "sealing")

from cryptography.exceptions import InvalidTag  # noqa: E402 - after the check above
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import x25519  # noqa: E402
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite  # noqa: E402

from choreo.errors import ConfigurationError, PermanentError  # noqa: E402

PREFIX = "sealed:v1:"
_SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.CHACHA20_POLY1305)
# The encapsulated key (32 bytes) and the AEAD tag (16 bytes) come with every sealed value.
_OVERHEAD = 32 + 16


class UnsealError(PermanentError):
    """A sealed value that cannot be opened. Permanent: no retry makes it readable."""


def _info(purpose: str) -> bytes:
    return b"choreo sealed v1\x00" + purpose.encode()


@dataclass(frozen=True)
class SealingKey:
    """The recipient's public key: anyone holding it can seal, no one can open with it."""

    public_key: x25519.X25519PublicKey

    def seal(self, value: str, *, purpose: str) -> str:
        sealed = _SUITE.encrypt(value.encode(), self.public_key, info=_info(purpose))
        return PREFIX + base64.urlsafe_b64encode(sealed).decode().rstrip("=")


@dataclass(frozen=True)
class OpeningKey:
    private_key: x25519.X25519PrivateKey

    @property
    def sealing_key(self) -> SealingKey:
        return SealingKey(self.private_key.public_key())

    def open(self, sealed: str, *, purpose: str, what: str = "the value") -> str:
        """The plaintext; :class:`UnsealError` naming why when it cannot be had. The message
        never contains the sealed text or any part of the plaintext."""
        return OpeningKeys((self,)).open(sealed, purpose=purpose, what=what)


class Opener(Protocol):
    """What opens a sealed value: one private key, or a ring of them during a rotation."""

    def open(self, sealed: str, *, purpose: str, what: str = "the value") -> str: ...


@dataclass(frozen=True)
class OpeningKeys:
    """A recipient's private keys during a rotation: the current one first, then the ones
    being retired. A value opens with whichever key it was sealed for."""

    keys: tuple[OpeningKey, ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("OpeningKeys needs at least one key")

    def open(self, sealed: str, *, purpose: str, what: str = "the value") -> str:
        """The plaintext; :class:`UnsealError` naming why when it cannot be had. The message
        never contains the sealed text or any part of the plaintext."""
        raw = _unwrap(sealed, what)
        for key in self.keys:
            try:
                plain = _SUITE.decrypt(raw, key.private_key, info=_info(purpose))
            except InvalidTag:
                continue  # sealed for another key of the ring, or not for this service
            try:
                return plain.decode()
            except UnicodeDecodeError:
                raise UnsealError(f"{what} opened, but is not UTF-8 text") from None
        keys = "key" if len(self.keys) == 1 else f"{len(self.keys)} keys"
        raise UnsealError(
            f"{what} cannot be opened with this service's private {keys}: it was sealed with"
            " another public key (the sender's key file does not match this one), for"
            " another purpose, or altered on the way"
        )


def _unwrap(sealed: str, what: str) -> bytes:
    """The sealed bytes of ``sealed:v1:<base64url>``; what is wrong with the text, if not."""
    if not sealed.startswith(PREFIX):
        raise UnsealError(
            f"{what} is not sealed (it does not start with {PREFIX!r}): the sender must"
            " seal it with this service's public key"
        )
    body = sealed[len(PREFIX) :]
    try:
        padded = body + "=" * (-len(body) % 4)
        raw = base64.b64decode(padded, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise UnsealError(f"{what} is sealed but not valid base64url") from None
    if len(raw) < _OVERHEAD:
        raise UnsealError(f"{what} is sealed but truncated ({len(raw)} bytes)")
    return raw


def generate() -> OpeningKey:
    return OpeningKey(x25519.X25519PrivateKey.generate())


def private_pem(key: OpeningKey) -> bytes:
    return key.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_pem(key: SealingKey) -> bytes:
    return key.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write through a temporary file and rename, so a reader never sees half a key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(temporary, mode)  # the umask may have narrowed or the file existed
    temporary.replace(path)


def write_keypair(private_path: Path, public_path: Path, key: OpeningKey | None = None) -> None:
    """Write a (new) key pair: the private key mode 0600, the public key 0644."""
    key = key or generate()
    _write(private_path, private_pem(key), 0o600)
    _write(public_path, public_pem(key.sealing_key), 0o644)


def ensure_keypair(private_path: Path, public_path: Path) -> None:
    """Create the pair unless the private key exists (then write a missing public key from it).

    Several processes of one host may start at once (``choreo up``): a lock file next to the
    keys makes one of them create the pair and the others use it.
    """
    private_path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = private_path.with_name(f".{private_path.name}.lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not private_path.exists():
                write_keypair(private_path, public_path)
            elif not public_path.exists():
                key = load_opening_key(private_path, setting="")
                _write(public_path, public_pem(key.sealing_key), 0o644)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read(path: Path, setting: str) -> bytes:
    hint = f" (set by {setting})" if setting else ""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the key file {path}{hint}: {exc.strerror or exc}"
        ) from None


def load_sealing_key(path: Path, *, setting: str) -> SealingKey:
    """A public key from a PEM file; a private key file is accepted too (its public half)."""
    data = _read(path, setting)
    hint = f" (set by {setting})" if setting else ""
    key: object = None
    with contextlib.suppress(ValueError):
        key = serialization.load_pem_public_key(data)
    if key is None:
        with contextlib.suppress(ValueError, TypeError):
            key = serialization.load_pem_private_key(data, password=None).public_key()
    if isinstance(key, x25519.X25519PublicKey):
        return SealingKey(key)
    raise ConfigurationError(
        f"{path}{hint} is not a PEM X25519 public key: write a key pair with"
        " `choreo secrets --out DIR`"
    )


def load_opening_key(path: Path, *, setting: str) -> OpeningKey:
    data = _read(path, setting)
    hint = f" (set by {setting})" if setting else ""
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigurationError(
            f"{path}{hint} is not an unencrypted PEM private key: write one with"
            " `choreo secrets --out DIR`"
        ) from None
    if not isinstance(private, x25519.X25519PrivateKey):
        raise ConfigurationError(f"{path}{hint} is a private key, but not an X25519 one")
    return OpeningKey(private)
