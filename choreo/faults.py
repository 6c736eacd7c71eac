"""Named crash points for fault-injection tests and chaos runs.

A process started with ``CHOREO_CRASH_AT=<point>`` kills itself with SIGKILL the first time it
reaches that point, which is how tests reproduce "died after commit, before ack" exactly.
``CHOREO_CRASH_AFTER=<n>`` lets the first n passes through the point go by. Unset, each check
is one dict lookup.
"""

from __future__ import annotations

import os
import signal

AFTER_COMMIT_BEFORE_ACK = "consumer.after_commit"
AFTER_PUBLISH_BEFORE_MARK = "relay.after_publish"
AFTER_COMMIT_BEFORE_PUBLISH = "command.after_commit"
# Only reachable in the deliberately broken "ack first" build (RuntimeSettings).
AFTER_ACK_BEFORE_COMMIT = "consumer.after_ack"

_passes: dict[str, int] = {}


def crash_point(name: str) -> None:
    if os.environ.get("CHOREO_CRASH_AT") != name:
        return
    seen = _passes.get(name, 0)
    _passes[name] = seen + 1
    if seen >= int(os.environ.get("CHOREO_CRASH_AFTER", "0")):
        os.kill(os.getpid(), signal.SIGKILL)
