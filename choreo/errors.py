"""Errors a handler raises to steer the failure policy."""

from __future__ import annotations


class TransientError(Exception):
    """Worth retrying: the message is naked with a growing delay, up to ``max_deliveries``."""


class PermanentError(Exception):
    """Retrying cannot help: the step gives up at once (its give-up handler runs, if it has
    one, and the message is recorded in the dead-letter stream)."""


class CallTimedOut(TransientError):
    """An external call or a handler took longer than its timeout: retried like any outage."""


class PoisonMessage(Exception):
    """The message cannot be read at all (undecodable, unknown type or version, too deep)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ConfigurationError(Exception):
    """A setting is wrong; the message says which one and how to fix it."""
