"""A continuous pull from one durable JetStream consumer: messages requested ahead, in bulk.

nats-py's ``fetch`` pays per message and per batch: a task, a ``wait_for`` and a uuid for each
message, and for each batch a no-wait probe plus a second, lingering pull request, each
encoded as JSON. A service handling a few messages per batch pays that on every event. This
keeps one subscription on a private inbox and asks the server for up to ``batch`` messages
ahead of need; a new request goes out only when half of that credit is used up, or when the
outstanding requests have expired. What arrives waits in the subscription's own queue, which
``next_batch`` reads directly: no callback task in between, so a message reaches the consumer
one event-loop step after nats-py read it, not two.

The server's status messages keep the credit honest: a request that expired (408) or was
ended (409: consumer deleted, leadership change, ...) says how many of its messages were not
delivered (``Nats-Pending-Messages``); without that header all credit is dropped and asked for
again. Should a status be lost (a reconnect), every request expires by itself after
``expires_s`` and the credit is renewed then, so a pull never waits for more than that.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from typing import Any

from nats.errors import ConnectionClosedError

STATUS = "Status"
PENDING_MESSAGES = "Nats-Pending-Messages"
HEARTBEAT = "100"


class ContinuousPull:
    def __init__(
        self, nc: Any, api_prefix: str, stream: str, durable: str, batch: int, expires_s: float
    ) -> None:
        self._nc = nc
        self._next_subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._batch = batch
        self._expires_s = expires_s
        self._ready: deque[Any] = deque()
        self._credit = 0  # messages asked for and neither delivered nor released yet
        self._last_request = 0.0
        self._inbox = ""
        self._sub: Any = None
        self._arrivals: asyncio.Queue[Any] | None = None

    async def start(self) -> None:
        self._inbox = self._nc.new_inbox()
        # No callback: nats-py then only queues what arrives (no task of its own). Its
        # slow-consumer limits are off because the credit already bounds what can be queued.
        self._sub = await self._nc.subscribe(
            self._inbox, pending_msgs_limit=0, pending_bytes_limit=0
        )
        # nats-py offers no way to wait on that queue but a task per wait (``next_msg``) or
        # per message (``messages``); reading it directly costs neither.
        self._arrivals = self._sub._pending_queue

    async def stop(self) -> None:
        """Stop the flow; what arrived but was never handed out goes back to the server at
        once (a nak), instead of waiting out its ack wait in a process that is going away."""
        sub, self._sub = self._sub, None
        if sub is not None:
            await sub.unsubscribe()
        self._take_arrived()
        self._arrivals = None
        while self._ready:
            msg = self._ready.popleft()
            if not self._nc.is_closed:
                await msg.nak()

    def _take_arrived(self) -> None:
        """Move what the subscription has queued to ``_ready``, settling the credit."""
        arrivals = self._arrivals
        while arrivals is not None and not arrivals.empty():
            self._accept(arrivals.get_nowait())

    def _accept(self, msg: Any) -> None:
        status = msg.headers.get(STATUS) if msg.headers else None
        if status is None:
            self._credit = max(0, self._credit - 1)
            self._ready.append(msg)
        elif status != HEARTBEAT:
            # The end of a request (expired, or ended by the server): give back what it did not
            # deliver, or everything if the server does not say.
            pending = msg.headers.get(PENDING_MESSAGES)
            self._credit = max(0, self._credit - int(pending)) if pending else 0

    async def _top_up(self) -> None:
        now = time.monotonic()
        if now - self._last_request > self._expires_s + 0.5:
            self._credit = 0  # every request has expired by now, whatever was heard of it
        if self._credit > self._batch // 2:
            return
        wanted = self._batch - self._credit
        request = {"batch": wanted, "expires": int(self._expires_s * 1e9)}
        await self._nc.publish(self._next_subject, json.dumps(request).encode(), self._inbox)
        self._credit += wanted
        self._last_request = now

    async def next_batch(self, max_messages: int, timeout: float) -> list[Any]:
        """What has arrived, up to ``max_messages``; waits up to ``timeout`` for the first one.
        Raises ``TimeoutError`` when nothing came, ``ConnectionClosedError`` when the
        connection is gone for good (bind again on a new one)."""
        arrivals = self._arrivals
        if self._nc.is_closed or arrivals is None:
            raise ConnectionClosedError
        self._take_arrived()
        if not self._ready:
            deadline = time.monotonic() + timeout
            while not self._ready:
                await self._top_up()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                async with asyncio.timeout(remaining):
                    self._accept(await arrivals.get())
                self._take_arrived()
        count = min(max_messages, len(self._ready))
        batch = [self._ready.popleft() for _ in range(count)]
        await self._top_up()
        return batch
