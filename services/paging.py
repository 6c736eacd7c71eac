"""Keyset pages for the List RPCs (Google AIP-158): ``page_size`` and an opaque ``page_token``.

A token is the sort key of the last row of the previous page, so a row written while a client
pages is neither skipped nor repeated, and a page costs what it returns (no OFFSET scan). The
token is opaque to clients: URL-safe base64 of a JSON list, checked on the way back in.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc

from choreo.grpc_errors import abort_invalid
from choreo.store.port import Database, Row, Transaction

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 50  # what page_size 0 means
MAX_PAGE_SIZE = 500  # also declared in each List request's buf.validate rule


class InvalidPageToken(ValueError):
    """The page token was not handed out by this RPC (an INVALID_ARGUMENT for the caller)."""


def encode_token(key: Sequence[str]) -> str:
    raw = json.dumps(list(key), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_token(token: str, parts: int, rpc: str) -> tuple[str, ...]:
    try:
        value = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        value = None
    if (
        not isinstance(value, list)
        or len(value) != parts
        or not all(isinstance(v, str) for v in value)
    ):
        raise InvalidPageToken(f"is not a next_page_token returned by {rpc}")
    return tuple(value)


@dataclass(frozen=True, slots=True)
class KeysetQuery:
    """One table's page query: ``select`` columns, ordered by ``keys`` (text columns, the last
    one unique), ascending or newest-first; ``key_of`` reads a row's key back."""

    rpc: str
    table: str
    select: str
    keys: tuple[str, ...]
    key_of: Callable[[Row], tuple[str, ...]]
    descending: bool = False
    where: str = ""  # a fixed condition, e.g. "status <> 'REJECTED'"


async def fetch_page(
    tx: Transaction, query: KeysetQuery, page_size: int, page_token: str
) -> tuple[list[Row], str]:
    """The rows of one page and the token of the next ('' on the last page). Raises
    :class:`InvalidPageToken` for a token this query did not hand out."""
    size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    conditions = [query.where] if query.where else []
    params: list[object] = []
    if page_token:
        after = decode_token(page_token, len(query.keys), query.rpc)
        cmp = "<" if query.descending else ">"
        # (k1, k2) after (a1, a2), spelled out: row values are not portable across stores.
        if len(query.keys) == 1:
            conditions.append(f"{query.keys[0]} {cmp} ?")
            params.append(after[0])
        else:
            first, second = query.keys
            conditions.append(f"({first} {cmp} ? OR ({first} = ? AND {second} {cmp} ?))")
            params += [after[0], after[0], after[1]]
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    direction = " DESC" if query.descending else ""
    order = ", ".join(f"{key}{direction}" for key in query.keys)
    rows = await tx.fetchall(
        f"SELECT {query.select} FROM {query.table}{where} ORDER BY {order} LIMIT ?",
        (*params, size + 1),
    )
    page = list(rows[:size])
    token = encode_token(query.key_of(page[-1])) if len(rows) > size else ""
    return page, token


async def read_page(
    db: Database,
    context: grpc.aio.ServicerContext,
    page: Callable[[Transaction], Awaitable[tuple[list[T], str]]],
) -> tuple[list[T], str]:
    """A List RPC's page, read in one read transaction; a token the RPC did not hand out
    answers INVALID_ARGUMENT naming ``page_token``."""
    try:
        async with db.read() as tx:
            return await page(tx)
    except InvalidPageToken as exc:
        await abort_invalid(context, [("page_token", str(exc))])
