"""Named points on the delivery path, announced to whoever listens.

The runtime does nothing at these points. A test harness (``tools/faults.py`` in the choreo
repository) listens to them, to kill a process exactly "after the commit, before the ack" or
to break delivery on purpose and show that the chaos checks notice. Nothing listens in a
service: each point then costs one look at an empty list.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

# A handler's transaction committed; the JetStream message is not acked yet.
AFTER_COMMIT_BEFORE_ACK = "consumer.after_commit"
# The relay published a row; it is not marked published yet.
AFTER_PUBLISH_BEFORE_MARK = "relay.after_publish"
# A command's transaction (an RPC's) committed; its events are not handed to the relay yet.
AFTER_COMMIT_BEFORE_PUBLISH = "command.after_commit"
# A delivery passed every check and its handler is about to run; the subject is the JetStream
# message, not yet acked.
BEFORE_HANDLING = "consumer.before_handling"
# Inside the handler's span, before the handler; the subject is the decoded event.
IN_HANDLER = "consumer.in_handler"

#: ``listener(point, subject)``; it may return an awaitable, which the runtime awaits.
Listener = Callable[[str, object], Awaitable[None] | None]

_listeners: list[Listener] = []


def listen(listener: Listener) -> None:
    """Call ``listener`` at every point from now on (a harness does this before serving)."""
    _listeners.append(listener)


def listening() -> bool:
    """Whether anything listens: a hot path can skip announcing a point that needs a task."""
    return bool(_listeners)


def stop_listening() -> None:
    _listeners.clear()


async def reached(point: str, subject: object = None) -> None:
    if not _listeners:
        return
    for listener in tuple(_listeners):
        pending = listener(point, subject)
        if pending is not None:
            await pending
