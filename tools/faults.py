"""Fault injection for tests and chaos runs: the runtime announces named points
(``choreo.checkpoints``), and this harness, installed in a service's process, acts there.

Run a service with it installed: ``python -m tools.faults serve NAME [...]`` (the arguments of
``choreo``), with the faults in its environment:

- ``CHOREO_CRASH_AT=<point>``: SIGKILL the first time the process reaches that point
  (``consumer.after_commit``, ``relay.after_publish``, ``command.after_commit``,
  ``consumer.in_handler``; ``consumer.after_ack`` with ``CHOREO_FAULT_ACK_FIRST``), after
  letting ``CHOREO_CRASH_AFTER=<n>`` passes go by: "died after commit, before ack", exactly.
- ``CHOREO_CRASH_ON_CUSTOMER=<customer id>`` (and ``CHOREO_CRASH_ON_TYPE=<full event name>``):
  SIGKILL whenever a handler is about to run on an event whose ``customer_id`` is that value,
  a message that kills its consumer on every delivery (the "query of death").
- ``CHOREO_FAULT_DISABLE_INBOX=1`` and ``CHOREO_FAULT_ACK_FIRST=1``: deliberately broken
  builds (no deduplication; the classic ack-before-handling bug) that a chaos run must catch.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from choreo import checkpoints, inbox
from choreo.store.port import Transaction

# Only reachable with CHOREO_FAULT_ACK_FIRST: acked, the handler not yet run.
AFTER_ACK_BEFORE_COMMIT = "consumer.after_ack"
# What runs a service with the harness installed (services.system.SystemConfig.service_argv).
SERVE_ARGV = ("-m", "tools.faults", "serve")


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class Faults:
    crash_at: str = ""
    crash_after: int = 0
    crash_on_customer: str = ""
    crash_on_type: str = ""
    ack_first: bool = False
    passes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Faults:
        return cls(
            crash_at=environ.get("CHOREO_CRASH_AT", ""),
            crash_after=int(environ.get("CHOREO_CRASH_AFTER", "0") or "0"),
            crash_on_customer=environ.get("CHOREO_CRASH_ON_CUSTOMER", ""),
            crash_on_type=environ.get("CHOREO_CRASH_ON_TYPE", ""),
            ack_first=environ.get("CHOREO_FAULT_ACK_FIRST", "") in ("1", "true"),
        )

    def crash_point(self, point: str) -> None:
        if point != self.crash_at:
            return
        seen = self.passes.get(point, 0)
        self.passes[point] = seen + 1
        if seen >= self.crash_after:
            _kill()

    def on(self, point: str, subject: object) -> Awaitable[None] | None:
        if point == checkpoints.BEFORE_HANDLING and self.ack_first:
            return self._ack_first(subject)
        if point == checkpoints.IN_HANDLER:
            self._crash_on_marked(subject)
        self.crash_point(point)
        return None

    async def _ack_first(self, msg: Any) -> None:
        await msg.ack()  # the message is gone from the broker's view before any work is done
        self.crash_point(AFTER_ACK_BEFORE_COMMIT)

    def _crash_on_marked(self, event: object) -> None:
        if not self.crash_on_customer:
            return
        full_name = getattr(getattr(event, "DESCRIPTOR", None), "full_name", "")
        if self.crash_on_type and full_name != self.crash_on_type:
            return
        if getattr(event, "customer_id", None) == self.crash_on_customer:
            _kill()


def disable_inbox() -> None:
    """No deduplication: every delivery looks new, and recording one always succeeds."""

    async def never_handled(tx: Transaction, consumer: str, event_id: str) -> bool:
        return False

    async def recorded(tx: Transaction, consumer: str, event_id: str) -> bool:
        return True

    inbox.already_handled = never_handled
    inbox.record_handled = recorded


def install(environ: Mapping[str, str] = os.environ) -> Faults:
    """Arm this process with the faults its environment names."""
    faults = Faults.from_env(environ)
    listener: Callable[[str, object], Awaitable[None] | None] = faults.on
    checkpoints.listen(listener)
    if environ.get("CHOREO_FAULT_DISABLE_INBOX", "") in ("1", "true"):
        disable_inbox()
    return faults


def main() -> int:
    install()
    from choreo.cli import main as choreo_main

    return choreo_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
