"""The payment token, sealed for the payment service alone.

The order service seals the client's token at ``PlaceOrder`` with the payment service's public
key; inventory carries the sealed text forward unchanged; payment opens it with its private key
just before it calls the gateway. The streams (kept for days), the dead-letter stream and every
other client see only ``sealed:v1:...``. The seal is bound to the order id, so a sealed token
copied into another order's event does not open.

Keys are PEM files named by settings (never key material on a command line or in the
environment): ``CHOREO_PAYMENT_TOKEN_PUBLIC_KEY_FILE`` for the order service,
``CHOREO_PAYMENT_TOKEN_PRIVATE_KEY_FILE`` for the payment service. Unset, both use the pair under
``<data dir>/secrets/``, created on first use (what ``choreo up`` runs on one host);
``choreo secrets --out DIR`` writes a pair for other deployments.

Rotating the pair with orders in flight: give payment the new private key and list the old one
in ``CHOREO_PAYMENT_TOKEN_RETIRED_KEY_FILES`` (it opens tokens sealed for either), then give
the order service the new public key; drop the old key once the saga deadline has passed.
"""

from __future__ import annotations

from pathlib import Path

from choreo import sealing
from services.settings import SagaSettings

PUBLIC_KEY_SETTING = "CHOREO_PAYMENT_TOKEN_PUBLIC_KEY_FILE"
PRIVATE_KEY_SETTING = "CHOREO_PAYMENT_TOKEN_PRIVATE_KEY_FILE"
RETIRED_KEYS_SETTING = "CHOREO_PAYMENT_TOKEN_RETIRED_KEY_FILES"
PRIVATE_KEY_FILE = "payment-token-key.pem"
PUBLIC_KEY_FILE = "payment-token-public.pem"


def default_key_files(data_dir: Path) -> tuple[Path, Path]:
    """(private, public) key files of a single-host deployment, under the data folder."""
    secrets = data_dir / "secrets"
    return secrets / PRIVATE_KEY_FILE, secrets / PUBLIC_KEY_FILE


def _purpose(order_id: str) -> str:
    return f"choreo.payment_token/{order_id}"


def sealing_key(saga: SagaSettings) -> sealing.SealingKey:
    """The key the order service seals with: the configured file, or the data folder's pair."""
    if saga.payment_token_public_key_file is not None:
        return sealing.load_sealing_key(
            saga.payment_token_public_key_file, setting=PUBLIC_KEY_SETTING
        )
    private, public = default_key_files(saga.data_dir)
    sealing.ensure_keypair(private, public)
    return sealing.load_sealing_key(public, setting="")


def opening_key(saga: SagaSettings) -> sealing.OpeningKeys:
    """The keys the payment service opens with: the configured file (or the data folder's),
    then the retired ones still accepted during a rotation."""
    if saga.payment_token_private_key_file is not None:
        current = sealing.load_opening_key(
            saga.payment_token_private_key_file, setting=PRIVATE_KEY_SETTING
        )
    else:
        private, public = default_key_files(saga.data_dir)
        sealing.ensure_keypair(private, public)
        current = sealing.load_opening_key(private, setting="")
    retired = [
        sealing.load_opening_key(path, setting=RETIRED_KEYS_SETTING)
        for path in saga.payment_token_retired_key_files
    ]
    return sealing.OpeningKeys((current, *retired))


def seal(key: sealing.SealingKey, order_id: str, token: str) -> str:
    return key.seal(token, purpose=_purpose(order_id))


def open_token(key: sealing.Opener, order_id: str, sealed: str) -> str:
    """The plaintext token; :class:`choreo.sealing.UnsealError` (permanent) naming why not."""
    return key.open(
        sealed, purpose=_purpose(order_id), what=f"the payment token of order {order_id}"
    )


def write_keys(out: Path) -> list[str]:
    """``choreo secrets`` (entry point group ``choreo.secrets``): a fresh key pair for sealing
    the payment token. An existing pair is kept, since tokens in flight were sealed with it
    (delete the files to rotate)."""
    private, public = out / PRIVATE_KEY_FILE, out / PUBLIC_KEY_FILE
    sealing.ensure_keypair(private, public)
    return [
        f"payment token keys: {private} (mode 0600, payment service only) and {public}"
        " (order service)"
    ]
