"""Named crash points for fault-injection tests and chaos runs.

A process started with ``CHOREO_CRASH_AT=<point>`` kills itself with SIGKILL the first time it
reaches that point, which is how tests reproduce "died after commit, before ack" exactly.
``CHOREO_CRASH_AFTER=<n>`` lets the first n passes through the point go by. Unset, each check
is one comparison. All are read when the module is imported.

``CHOREO_CRASH_ON_CUSTOMER=<customer id>`` makes a process kill itself whenever it is about to
handle an event whose ``customer_id`` field is that value (and, with
``CHOREO_CRASH_ON_TYPE=<full event name>``, of that type only): a message that crashes its
consumer on every delivery (the "query of death"), which chaos runs inject to show that the
server's delivery count ends it. Never set outside tests and chaos runs.
"""

from __future__ import annotations

import os
import signal

from google.protobuf.message import Message

AFTER_COMMIT_BEFORE_ACK = "consumer.after_commit"
AFTER_PUBLISH_BEFORE_MARK = "relay.after_publish"
AFTER_COMMIT_BEFORE_PUBLISH = "command.after_commit"
# Inside the handler, on every delivery of a new process: a message that kills its consumer
# (a segfaulting library, an out-of-memory kill), which only the server's delivery count sees.
IN_HANDLER = "consumer.in_handler"
# Only reachable in the deliberately broken "ack first" build (RuntimeSettings).
AFTER_ACK_BEFORE_COMMIT = "consumer.after_ack"

_passes: dict[str, int] = {}
# Read once: faults are set in a process's environment when it starts, and these checks run
# several times per handled event (an os.environ lookup encodes its key every time).
_CRASH_AT = os.environ.get("CHOREO_CRASH_AT")
_CRASH_AFTER = int(os.environ.get("CHOREO_CRASH_AFTER", "0") or "0")
_CRASH_ON_CUSTOMER = os.environ.get("CHOREO_CRASH_ON_CUSTOMER")
_CRASH_ON_TYPE = os.environ.get("CHOREO_CRASH_ON_TYPE")


def crash_point(name: str) -> None:
    if name != _CRASH_AT:
        return
    seen = _passes.get(name, 0)
    _passes[name] = seen + 1
    if seen >= _CRASH_AFTER:
        os.kill(os.getpid(), signal.SIGKILL)


def crash_on_marked_message(message: Message) -> None:
    marked = _CRASH_ON_CUSTOMER
    if not marked:
        return
    only_type = _CRASH_ON_TYPE
    if only_type and message.DESCRIPTOR.full_name != only_type:
        return
    if getattr(message, "customer_id", None) == marked:
        os.kill(os.getpid(), signal.SIGKILL)
