"""Credentials never reach a log line or a terminal: URLs are printed with them masked."""

from __future__ import annotations

import re

# scheme://user:password@host or scheme://user@host (a token as the user name is a secret too).
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^@/\s?#]+)@")


def redact_url(url: str) -> str:
    """``postgresql://app:s3cret@db:5432/x`` -> ``postgresql://app:***@db:5432/x``.

    A user name alone (``nats://s3cret@host``) may be a token, so it is masked whole.

    Works on any text that contains URLs (an error message, a comma-separated server list),
    so callers can pass a whole message through it.
    """
    return _USERINFO.sub(_mask, url)


def _mask(match: re.Match[str]) -> str:
    user, colon, _ = match.group("userinfo").partition(":")
    return f"{match.group('scheme')}{user}:***@" if colon else f"{match.group('scheme')}***@"
