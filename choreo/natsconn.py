"""NATS connections that never stay stuck behind unsent data (issue 22, defect 1).

**The upstream behaviour worked around** (nats-py 2.16, ``nats/aio/client.py``; reported
upstream as nats-io/nats.py#671, "NATS PING/PONG does not reconnect correctly when the client
can't talk with the server", open): when a connection is declared stale (3 pings without a
pong) or fails, ``Client._attempt_reconnect`` first closes the old transport and then
``await self._transport.wait_closed()`` with no timeout, before it tries any server.
``TcpTransport.wait_closed`` is ``StreamWriter.wait_closed``: it returns once the event loop's
transport has called ``connection_lost``, and both uvloop and asyncio's own loop do that for a
closed transport only after its write buffer has drained. A client that kept publishing into
a partition (the order service: gRPC keeps feeding it) has unsent data there; it drains when
the partition heals, or when TCP gives up retransmitting (``tcp_retries2``, about 15 minutes).
Until then the client makes no reconnect attempt at all, healthy cluster nodes or not.
``Client._close`` has the same unbounded wait.

**What this module does**, for every ``nats://``/``tls://`` connection the runtime opens:

- :class:`BoundedCloseTransport` (a ``TcpTransport``) bounds ``wait_closed``: after
  :data:`CLOSE_GRACE_S` it aborts the transport, which drops the unsent bytes and closes the
  socket with a reset. Nothing that must arrive is lost that way: an event is re-published
  from the outbox until the broker acknowledges it (same ``Nats-Msg-Id``, deduplicated), an
  ack or a fetch that does not arrive is redelivered or retried, and nats-py replays its own
  reconnect buffer (``pending_size``) on the next connection.
- It sets ``TCP_USER_TIMEOUT`` (:func:`user_timeout_s`, the ping detection time) and TCP
  keepalive on the socket of every connection, the first and each reconnect (nats-py reuses
  the transport object and calls its ``connect`` again): the kernel itself then fails a
  connection whose sent data stays unacknowledged that long, instead of retransmitting for
  15 minutes.

Every connection is also a :class:`RuntimeClient`, whose header blocks are written and read by
:mod:`choreo.natsheaders` (nats-py's per-header Python costs about a quarter of a service's
instructions per event).

The transport is installed by handing nats-py's ``Client`` the transport before ``Client.connect``:
``Client._connect_to_server`` creates a ``TcpTransport`` only when ``Client._transport`` is
not set (falsy), and keeps it for every reconnect. That is a private attribute; if a nats-py
upgrade renames it, :func:`connect` refuses to start rather than silently run without the fix
(``tests/runtime/test_nats_failover.py`` also checks the fix end to end).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.transport import TcpTransport
from nats.protocol import command

from choreo import natsheaders

log = logging.getLogger(__name__)

# How long a closing connection may take to flush what it still has to send. A healthy link
# flushes in milliseconds; a partitioned one never does.
CLOSE_GRACE_S = 1.0
# The runtime's ping settings (choreo.service.connect_nats): a silent connection is declared
# stale after max_outstanding pings without a pong, 15-20 s.
PING_INTERVAL_S = 5
MAX_OUTSTANDING_PINGS = 3


def user_timeout_s(
    ping_interval_s: float = PING_INTERVAL_S, max_outstanding: int = MAX_OUTSTANDING_PINGS
) -> float:
    """The longest time a connection can go silent before nats-py declares it stale."""
    return ping_interval_s * (max_outstanding + 1)


def tune_socket(writer: asyncio.StreamWriter | None, user_timeout: float) -> None:
    """``TCP_USER_TIMEOUT`` and keepalive on the socket under ``writer`` (Linux; elsewhere
    whatever of it the platform has)."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    options: list[tuple[int, int, int]] = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (
        ("TCP_USER_TIMEOUT", int(user_timeout * 1000)),  # milliseconds
        ("TCP_KEEPIDLE", max(1, int(user_timeout / 2))),
        ("TCP_KEEPINTVL", max(1, int(user_timeout / 8))),
        ("TCP_KEEPCNT", 4),
    ):
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    for level, option, value in options:
        try:
            sock.setsockopt(level, option, value)
        except OSError as exc:  # not fatal: the bounded close below still holds
            log.debug("setsockopt(%d, %d) on the NATS socket failed: %r", level, option, exc)


class BoundedCloseTransport(TcpTransport):
    """nats-py's TCP transport, whose close never waits on unsent data for long."""

    def __init__(self, close_grace_s: float = CLOSE_GRACE_S, user_timeout: float = 20.0):
        super().__init__()
        self.close_grace_s = close_grace_s
        self.user_timeout = user_timeout
        self.aborted = 0  # closes that had to be cut short (for tests and logs)

    def __bool__(self) -> bool:
        # nats-py replaces a falsy transport with a new TcpTransport of its own
        # (``if not self._transport`` in Client._connect_to_server), and upstream's is falsy
        # until it first connects. Ours is kept from the start. Its other truth tests
        # (Client._close flushing) come after a connection, where upstream's is true too.
        return True

    async def connect(self, uri: Any, buffer_size: int, connect_timeout: int) -> None:
        await super().connect(uri, buffer_size, connect_timeout)
        tune_socket(self._io_writer, self.user_timeout)

    async def wait_closed(self) -> None:
        writer: asyncio.StreamWriter | None = self._io_writer
        if writer is None:
            return
        closing = asyncio.ensure_future(writer.wait_closed())
        done, _ = await asyncio.wait({closing}, timeout=self.close_grace_s)
        if not done:
            # Still flushing into a link that does not take it: drop the bytes, reset the socket.
            self.aborted += 1
            log.warning(
                "NATS connection still had unsent data %.1fs after close: aborting it",
                self.close_grace_s,
            )
            writer.transport.abort()
            done, _ = await asyncio.wait({closing}, timeout=self.close_grace_s)
            if not done:
                closing.cancel()
        if closing.done() and not closing.cancelled():
            # The error of a connection that died (reset, timed out) is no news here.
            with contextlib.suppress(Exception):
                closing.result()


# A handler of replies taken inline: (subject, payload, raw header block or None).
ReplyHandler = Callable[[bytes, bytes, bytes | None], None]


class RuntimeClient(Client):
    """nats-py's ``Client`` with header blocks written and read by :mod:`choreo.natsheaders`
    (the same bytes and the same dict, in a fraction of the instructions). Anything that fast
    path does not accept goes through nats-py's own code unchanged.

    It also takes replies inline (:meth:`subscribe_inline`): the relay's PubAcks reach their
    handler from the read loop itself, without a ``Msg``, a queue and a task switch each."""

    def __init__(self) -> None:
        super().__init__()
        self._inline: dict[int, ReplyHandler] = {}

    async def subscribe_inline(self, subject: str, handler: ReplyHandler) -> Any:
        """Subscribe ``subject`` with ``handler`` called synchronously for every message, in
        the read loop: it must be quick and never raise. The subscription is nats-py's own
        (re-subscribed after a reconnect like any other); unsubscribing it ends the calls."""
        sub = await self.subscribe(subject, pending_msgs_limit=0, pending_bytes_limit=0)
        self._inline[sub._id] = handler
        return sub

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
    ) -> None:
        # (``headers`` is None for a message without any, whatever nats-py's annotation says.)
        handler = self._inline.get(sid)
        if handler is None:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        if sid not in self._subs:  # unsubscribed: nothing more for it
            del self._inline[sid]
            return
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        try:
            handler(subject, data, headers)
        except Exception:  # the read loop must go on whatever one reply does to its handler
            log.exception("handler of %s failed on a message", subject.decode(errors="replace"))

    def write_pending(self) -> None:
        """Hand what is pending to the socket now, in this loop step, rather than in the
        flusher's next turn: the flusher still runs (and still drains), finding nothing left
        to write. While disconnected nothing is written: what is pending waits for the
        reconnect, as in nats-py."""
        if self._pending_data_size and self._transport is not None and self.is_connected:
            self._transport.writelines(self._pending)
            self._pending = []
            self._pending_data_size = 0

    @staticmethod
    def _parse_header_lines(raw: bytes) -> dict[str, str]:
        parsed = natsheaders.parse_lines(raw)
        if parsed is None:
            parsed = Client._parse_header_lines(raw)
        return parsed

    async def _send_publish(
        self,
        subject: str,
        reply: str,
        payload: bytes,
        payload_size: int,
        headers: dict[str, Any] | None,
    ) -> None:
        block = None if headers is None else natsheaders.encode_block(headers)
        if block is None or not subject:
            await super()._send_publish(subject, reply, payload, payload_size, headers)
            return
        # What Client._send_publish does after it has built the header block.
        self.stats["out_msgs"] += 1
        self.stats["out_bytes"] += payload_size
        await self._send_command(command.hpub_cmd(subject, reply, block, payload))
        if self._flush_queue is not None and self._flush_queue.empty():
            await self._flush_pending()


@functools.cache
def _check_client_internals() -> None:
    """Refuse to start on a nats-py whose internals :class:`RuntimeClient` relies on moved,
    rather than run with a publish that skips a step nats-py added (once per process: the
    nats-py in it does not change)."""
    missing = [
        name
        for name in (
            "_parse_header_lines",
            "_send_publish",
            "_send_command",
            "_flush_pending",
            "_process_msg",
        )
        if not callable(getattr(Client, name, None))
    ]
    state = Client()  # the attributes write_pending reads and resets
    attributes = ("_pending", "_pending_data_size", "_transport")
    missing += [name for name in attributes if not hasattr(state, name)]
    if missing or not callable(getattr(command, "hpub_cmd", None)):
        raise RuntimeError(
            f"nats-py's Client no longer has {missing or ['hpub_cmd']}: choreo's header fast"
            " path, inline replies and inline writes (choreo/natsconn.py) cannot be installed;"
            " check the upgrade"
        )


async def connect(
    servers: list[str],
    *,
    close_grace_s: float = CLOSE_GRACE_S,
    **options: Any,
) -> Any:
    """``nats.connect(servers, **options)`` with :class:`BoundedCloseTransport` for TCP, and
    the runtime's ping settings unless ``options`` name others."""
    options.setdefault("ping_interval", PING_INTERVAL_S)
    options.setdefault("max_outstanding_pings", MAX_OUTSTANDING_PINGS)
    _check_client_internals()
    nc = RuntimeClient()
    if any(url.startswith(("ws://", "wss://")) for url in servers):
        await nc.connect(servers, **options)  # not a TCP transport: nats-py's own
        return nc
    if not hasattr(nc, "_transport") or nc._transport is not None:
        raise RuntimeError(
            "nats-py no longer creates its transport lazily (Client._transport): choreo's"
            " bounded close (choreo/natsconn.py) cannot be installed; check the upgrade"
        )
    nc._transport = BoundedCloseTransport(
        close_grace_s,
        user_timeout_s(options["ping_interval"], options["max_outstanding_pings"]),
    )
    await nc.connect(servers, **options)
    return nc
