"""Dead letters: what a consumer gave up on, with why, and a way to try again.

A dead letter keeps the original body and headers and adds ``choreo-dlq-*`` headers: reason,
detail, service, original subject, stream sequence and delivery count. Its ``Nats-Msg-Id`` is
derived from the original stream position, so a consumer that crashes between dead-lettering
and acking does not file the same letter twice.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nats.js.errors import NotFoundError

from choreo import subjects
from choreo.envelope import H_ID, H_MSG_ID

H_REASON = "choreo-dlq-reason"
H_DETAIL = "choreo-dlq-detail"
H_SERVICE = "choreo-dlq-service"
H_SUBJECT = "choreo-dlq-subject"
H_STREAM = "choreo-dlq-stream"
H_STREAM_SEQ = "choreo-dlq-stream-seq"
H_DELIVERIES = "choreo-dlq-deliveries"
H_TIME = "choreo-dlq-time"
H_REPLAY_OF = "choreo-replay-of"

# Reasons, as they appear in the dead-letter headers.
UNDECODABLE = "undecodable_body"
UNKNOWN_TYPE = "unknown_event_type"
UNSUPPORTED_VERSION = "unsupported_schema_version"
MISSING_HEADERS = "missing_headers"
CHAIN_TOO_DEEP = "chain_depth_exceeded"
RETRIES_EXHAUSTED = "retries_exhausted"
REJECTED = "handler_rejected"
GAP_NOT_FILLED = "gap_not_filled"


@dataclass(frozen=True)
class DeadLetter:
    seq: int
    service: str
    reason: str
    detail: str
    subject: str
    headers: dict[str, str]
    body: bytes
    deliveries: int
    dead_lettered_at: float

    @property
    def original_headers(self) -> dict[str, str]:
        return {k: v for k, v in self.headers.items() if not k.startswith("choreo-dlq-")}


async def dead_letter(
    js: Any,
    *,
    service: str,
    subject: str,
    headers: Mapping[str, str] | None,
    body: bytes,
    reason: str,
    detail: str,
    stream: str,
    stream_seq: int,
    deliveries: int,
) -> None:
    letter_headers = dict(headers or {})
    letter_headers.update(
        {
            H_MSG_ID: f"dlq:{service}:{stream}:{stream_seq}",
            H_REASON: reason,
            H_DETAIL: detail[:1000],
            H_SERVICE: service,
            H_SUBJECT: subject,
            H_STREAM: stream,
            H_STREAM_SEQ: str(stream_seq),
            H_DELIVERIES: str(deliveries),
            H_TIME: f"{time.time():.6f}",
        }
    )
    await js.publish(subjects.dlq_subject(service, subject), body, headers=letter_headers)


def _letter(seq: int, headers: Mapping[str, str] | None, body: bytes | None) -> DeadLetter:
    headers = dict(headers or {})
    return DeadLetter(
        seq=seq,
        service=headers.get(H_SERVICE, ""),
        reason=headers.get(H_REASON, ""),
        detail=headers.get(H_DETAIL, ""),
        subject=headers.get(H_SUBJECT, ""),
        headers=headers,
        body=body or b"",
        deliveries=int(headers.get(H_DELIVERIES, "0") or 0),
        dead_lettered_at=float(headers.get(H_TIME, "0") or 0),
    )


async def get_dead_letter(js: Any, seq: int) -> DeadLetter:
    raw = await js.get_msg(subjects.DLQ_STREAM, seq)
    return _letter(seq, raw.headers, raw.data)


async def list_dead_letters(js: Any, service: str | None = None) -> list[DeadLetter]:
    """Every dead letter still in the stream, oldest first (optionally of one service)."""
    info = await js.stream_info(subjects.DLQ_STREAM)
    letters: list[DeadLetter] = []
    if info.state.messages == 0:
        return letters
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            letter = await get_dead_letter(js, seq)
        except NotFoundError:
            continue  # deleted or aged out
        if service is None or letter.service == service:
            letters.append(letter)
    return letters


async def replay(js: Any, seq: int) -> str:
    """Publish a dead letter again on its original subject; returns the new ``Nats-Msg-Id``.

    The id is derived (``<event id>:replay:<dlq seq>``) so the broker does not drop it as a
    duplicate of the original, while replaying the same letter twice is still deduplicated.
    The event id inside (``ce-id``) is unchanged: subscribers that handled the original event
    already find it in their inbox and skip it.
    """
    letter = await get_dead_letter(js, seq)
    headers = letter.original_headers
    original_id = headers.get(H_ID) or headers.get(H_MSG_ID) or f"dlq-{seq}"
    headers[H_MSG_ID] = f"{original_id}:replay:{seq}"
    headers[H_REPLAY_OF] = str(seq)
    await js.publish(letter.subject, letter.body, headers=headers)
    return headers[H_MSG_ID]
