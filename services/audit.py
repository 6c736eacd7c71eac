"""The invariant auditor: checks invariants 1-6 (README, "The invariants") on a quiet system.

It reads the system the way an operator can: the gRPC APIs of the services, the event streams,
the dead-letter stream, and the fake providers' own ledgers (the "bank statement"). Used by the
end-to-end tests, ``make demo`` and ``choreo chaos``; every violation names its order id.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc

from choreo import contracts, dlq, subjects
from choreo.envelope import (
    H_AGGREGATE_VERSION,
    H_CAUSATION_ID,
    H_CORRELATION_ID,
    H_ID,
    H_SOURCE,
    H_SUBJECT,
    H_TYPE,
)
from choreo.store.sqlite import path_of as sqlite_path_of
from choreo.streamread import StoredMessage, read_stream
from choreo.streams import CONTEXTS
from services.catalog import Catalog, load_catalog
from services.payment.gateway import FakePaymentGateway
from services.registry import SERVICE_NAMES
from services.settings import SagaSettings
from services.shipping.provider import FakeShippingProvider
from shop.inventory.v1 import inventory_service_pb2 as inventory_pb
from shop.inventory.v1 import inventory_service_pb2_grpc as inventory_grpc
from shop.order.v1 import events_pb2 as order_events
from shop.order.v1 import order_service_pb2 as order_pb
from shop.order.v1 import order_service_pb2_grpc as order_grpc

SHIPPED = order_pb.ORDER_STATUS_SHIPPED
CANCELLED = order_pb.ORDER_STATUS_CANCELLED


def required_compensations() -> dict[str, tuple[str, ...]]:
    """The required compensations, by short name: failure => events that must follow it for the
    same order once each. Read from the order saga's option in the contracts (one source)."""
    return {
        failure.rsplit(".", 1)[-1]: tuple(name.rsplit(".", 1)[-1] for name in required)
        for shape in contracts.sagas()
        for failure, required in shape.compensations.items()
    }


@dataclass(frozen=True)
class Violation:
    invariant: int
    order_id: str
    message: str

    def __str__(self) -> str:
        return f"invariant {self.invariant}: order {self.order_id or '-'}: {self.message}"


@dataclass(frozen=True)
class Event:
    """An event read back from a stream (first copy of each event id)."""

    event_id: str
    event_type: str  # short name, e.g. OrderCreated
    source: str
    order_id: str
    correlation_id: str
    causation_id: str
    stream_seq: int
    aggregate_version: int = 0


@dataclass
class AuditReport:
    orders: int = 0
    final_states: Counter[str] = field(default_factory=Counter)
    cancellation_reasons: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def violated(self, invariant: int, order_id: str, message: str) -> None:
        self.violations.append(Violation(invariant, order_id, message))


@dataclass(frozen=True)
class LedgerView:
    """What the fake providers' ledgers say, per order."""

    charges: Mapping[str, int]
    refunds: Mapping[str, int]
    bookings: Mapping[str, int]
    # Booked shipments the carrier has cancelled since, per order.
    cancelled_bookings: Mapping[str, int] = field(default_factory=dict)


def _events(messages: Iterable[StoredMessage]) -> list[Event]:
    seen: set[str] = set()
    events = []
    for message in messages:
        headers = message.headers
        event_id = headers.get(H_ID, "")
        if not event_id or event_id in seen or not headers.get(H_TYPE):
            continue
        if not contracts_event(headers[H_TYPE]):
            continue  # poison injected on an event subject: audited through the DLQ
        seen.add(event_id)
        events.append(
            Event(
                event_id=event_id,
                event_type=headers[H_TYPE].rsplit(".", 1)[-1],
                source=headers.get(H_SOURCE, ""),
                order_id=headers.get(H_SUBJECT, ""),
                correlation_id=headers.get(H_CORRELATION_ID, ""),
                causation_id=headers.get(H_CAUSATION_ID, ""),
                stream_seq=message.seq,
                aggregate_version=int(headers.get(H_AGGREGATE_VERSION, "0") or 0),
            )
        )
    return events


def contracts_event(event_type: str) -> bool:
    return event_type in contracts.event_classes()


async def read_ledgers(data_dir: Path, saga: SagaSettings) -> LedgerView:
    catalog = load_catalog(saga.catalog_path)
    gateway = FakePaymentGateway.from_catalog(data_dir / saga.payment_ledger.name, catalog)
    provider = FakeShippingProvider(data_dir / saga.shipping_ledger.name)
    payments = await gateway.ledger_counts()
    shipping = await provider.ledger_counts()
    return LedgerView(
        charges=payments.charges,
        refunds=payments.refunds,
        bookings=shipping.bookings,
        cancelled_bookings=shipping.cancelled,
    )


async def list_all_orders(channel: grpc.aio.Channel) -> list[order_pb.Order]:
    stub: order_grpc.OrderServiceAsyncStub = order_grpc.OrderServiceStub(channel)
    orders: list[order_pb.Order] = []
    token = ""
    while True:
        page = await stub.ListOrders(
            order_pb.ListOrdersRequest(page_size=500, page_token=token), timeout=30
        )
        orders.extend(page.orders)
        token = page.next_page_token
        if not token:
            return orders


async def audit(
    *,
    js: Any,
    addresses: Mapping[str, str],
    catalog: Catalog,
    ledgers: LedgerView,
) -> AuditReport:
    """Every invariant, 1 to 5 (the checks of the contracts' saga shape included)."""
    return await _audit(js=js, addresses=addresses, catalog=catalog, ledgers=ledgers)


async def shop_audit(
    *,
    js: Any,
    addresses: Mapping[str, str],
    catalog: Catalog,
    ledgers: LedgerView,
) -> AuditReport:
    """What only the shop can check, beyond what ``choreo audit`` checks of any saga (one final
    event, the closing notification, the required compensations, correlation ids): the order
    service's view of each order, OrderConfirmed first, the providers' ledgers (no double
    charge or booking, refunds), stock, every reaction and every consumer."""
    return await _audit(js=js, addresses=addresses, catalog=catalog, ledgers=ledgers, generic=False)


async def _audit(
    *,
    js: Any,
    addresses: Mapping[str, str],
    catalog: Catalog,
    ledgers: LedgerView,
    generic: bool = True,
) -> AuditReport:
    report = AuditReport()
    messages: list[StoredMessage] = []
    for context in CONTEXTS:
        messages += await read_stream(js, subjects.stream_name(context))
    letters = await dlq.list_dead_letters(js)
    # A poison message was never an event of the saga (it is accounted for by the DLQ check of
    # whoever injected it); leave it out of the per-order books. A step that gave up (its
    # letter is compensated or an alarm) met a real event of the saga: that one stays.
    dead_ids = {
        letter.headers.get(H_ID, "")
        for letter in letters
        if not letter.compensated and not letter.alarm
    }
    events = [event for event in _events(messages) if event.event_id not in dead_ids]
    for letter in letters:
        report.dead_letters[letter.reason] += 1
    for event in events:
        report.events[event.event_type] += 1

    by_order: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        by_order[event.order_id].append(event)

    async with grpc.aio.insecure_channel(addresses["order"]) as channel:
        orders = await list_all_orders(channel)
    report.orders = len(orders)

    for order in orders:
        _check_order(report, order, by_order.get(order.order_id, []), ledgers, generic=generic)
    known = {order.order_id for order in orders}
    for order_id in by_order:
        if order_id not in known:
            report.violated(5, order_id, "events exist for an order the order service lacks")

    cancelled = {
        order.order_id: order_events.CancellationReason.Name(order.cancellation_reason)
        for order in orders
        if order.status == CANCELLED
    }
    _check_reactions(report, events, letters, cancelled)
    await _check_consumers(report, js)
    await _check_stock(report, addresses["inventory"], catalog)
    await _check_cancelled_stock(report, addresses["inventory"], frozenset(cancelled))
    return report


def _check_confirmed_first(report: AuditReport, order: order_pb.Order, events: list[Event]) -> None:
    """1. A paid order publishes OrderConfirmed once, at a lower aggregate version than its
    OrderShipped or OrderCancelled. An order the deadline cancelled before it heard of the
    payment is the one exception (payment voids or refunds that charge)."""
    if not any(e.event_type == "PaymentCompleted" for e in events):
        return
    if order.cancellation_reason == order_events.CANCELLATION_REASON_DEADLINE_EXCEEDED:
        return
    versions = {e.event_type: e.aggregate_version for e in events if e.source == "order"}
    confirmed = [e for e in events if e.event_type == "OrderConfirmed"]
    if len(confirmed) != 1:
        report.violated(1, order.order_id, f"paid, but {len(confirmed)} OrderConfirmed")
        return
    for final in ("OrderShipped", "OrderCancelled"):
        if final in versions and versions[final] <= confirmed[0].aggregate_version:
            report.violated(
                1, order.order_id, f"{final} (version {versions[final]}) before OrderConfirmed"
            )


def _check_order(
    report: AuditReport,
    order: order_pb.Order,
    events: list[Event],
    ledgers: LedgerView,
    *,
    generic: bool = True,
) -> None:
    """The invariants of one order. ``generic``: also those ``choreo audit`` checks of any
    saga from its shape (final state reached once, the closing notification, the required
    compensations, correlation ids), which the shop's add-on leaves to it."""
    order_id = order.order_id
    status = order_pb.OrderStatus.Name(order.status).removeprefix("ORDER_STATUS_")
    report.final_states[status] += 1
    types = Counter(event.event_type for event in events)

    # 1. One final state, reached, with its compensations. The order service's own view (its
    # status, customer_notified) is the shop's; the events' is also checked by choreo audit.
    if order.status not in (SHIPPED, CANCELLED):
        report.violated(1, order_id, f"not final: {status}")
    if not order.customer_notified and order.status in (SHIPPED, CANCELLED):
        report.violated(1, order_id, f"{status} but the customer was never told")
    if order.status == CANCELLED:
        reason = order_events.CancellationReason.Name(order.cancellation_reason)
        report.cancellation_reasons[reason.removeprefix("CANCELLATION_REASON_")] += 1
    if generic:
        if order.status == SHIPPED and types["OrderCancelled"]:
            report.violated(1, order_id, "both shipped and cancelled")
        for trigger, required in required_compensations().items():
            if types[trigger]:
                for compensation in required:
                    if types[compensation] != 1:
                        report.violated(
                            1,
                            order_id,
                            f"{trigger} needs one {compensation}, saw {types[compensation]}",
                        )
    _check_confirmed_first(report, order, events)
    if generic:
        for event in events:
            if event.correlation_id != order.correlation_id:
                report.violated(
                    5, order_id, f"{event.event_type} has correlation id {event.correlation_id}"
                )

    # 3. Money and bookings, from the providers' own ledgers.
    charges = ledgers.charges.get(order_id, 0)
    refunds = ledgers.refunds.get(order_id, 0)
    bookings = ledgers.bookings.get(order_id, 0)
    if charges > 1:
        report.violated(3, order_id, f"charged {charges} times")
    if bookings > 1:
        report.violated(3, order_id, f"shipment booked {bookings} times")
    if order.status == CANCELLED and charges and refunds != 1:
        report.violated(3, order_id, f"cancelled after a charge but refunded {refunds} times")
    if order.status == SHIPPED and (charges != 1 or refunds):
        report.violated(3, order_id, f"shipped with {charges} charges and {refunds} refunds")
    active = bookings - ledgers.cancelled_bookings.get(order_id, 0)
    if order.status == CANCELLED and active > 0:
        report.violated(3, order_id, f"cancelled with {active} booking(s) still active")

    # 4. One notification per final state (the saga's closing event: choreo audit checks it).
    if generic and types["NotificationSent"] != 1:
        report.violated(4, order_id, f"{types['NotificationSent']} notifications, expected 1")


# Reactions that may rightly emit nothing: an order that an overtaking ShipmentCreated or
# ShippingFailed already confirmed (then shipped or cancelled), or that its deadline cancelled,
# ignores the late PaymentCompleted. Their delivery is proven by the consumer check instead
# (every durable consumer fully acked).
# The deadline compensations react to every OrderCancelled but emit only for a cancellation at
# the saga deadline (and only when something was reserved or charged).
MAY_BE_NO_OP = {
    ("PaymentCompleted", "order"),
    ("OrderCancelled", "inventory"),
    ("OrderCancelled", "payment"),
}


# Forward steps that rightly do nothing for an order already cancelled: a cancellation wins
# against a late (or replayed) forward event, in every service that remembers it.
NO_OP_WHEN_CANCELLED = {
    ("ShipmentCreated", "order"),
    ("OrderCreated", "inventory"),
    ("InventoryReserved", "payment"),
    ("PaymentCompleted", "shipping"),
    ("ShipmentCreated", "inventory"),
}

# A failure event for an order that something else had cancelled first (its deadline; a
# replayed letter's late failure): the compensations ran for that cancellation already, so the
# reactions to the failure may be no-ops. The required compensations still count them.
FAILURE_CANCELS_WITH = {
    "InventoryReservationFailed": "CANCELLATION_REASON_INVENTORY_UNAVAILABLE",
    "PaymentFailed": "CANCELLATION_REASON_PAYMENT_FAILED",
    "ShippingFailed": "CANCELLATION_REASON_SHIPPING_FAILED",
}


def _may_be_no_op(event: Event, service: str, cancelled: Mapping[str, str]) -> bool:
    reason = cancelled.get(event.order_id)
    if reason is None:
        return False
    if (event.event_type, service) in NO_OP_WHEN_CANCELLED:
        return True
    own = FAILURE_CANCELS_WITH.get(event.event_type)
    return own is not None and reason != own


def _check_reactions(
    report: AuditReport,
    events: list[Event],
    letters: list[dlq.DeadLetter],
    cancelled: Mapping[str, str] | None = None,
) -> None:
    """5. Every event reached every subscriber: its reaction exists, or it is a dead letter.

    An event published in two schema versions at once (OrderCreated v1 and v2 during a
    migration window) is one fact: a reaction to either version answers both."""
    reacting: dict[str, set[str]] = defaultdict(set)
    for edge in contracts.choreography():
        if edge.emits and (edge.trigger.rsplit(".", 1)[-1], edge.service) not in MAY_BE_NO_OP:
            reacting[edge.trigger.rsplit(".", 1)[-1]].add(edge.service)
    by_id = {event.event_id: event for event in events}
    reactions = {(event.causation_id, event.source) for event in events}
    answered = {
        (by_id[cause].order_id, by_id[cause].event_type, service)
        for cause, service in reactions
        if cause in by_id
    }
    dead = {(letter.headers.get(H_ID, ""), letter.service) for letter in letters}
    for event in events:
        for service in sorted(reacting.get(event.event_type, ())):
            if (event.event_id, service) in dead:
                continue
            if _may_be_no_op(event, service, cancelled or {}):
                continue
            if (event.order_id, event.event_type, service) not in answered:
                report.violated(
                    5,
                    event.order_id,
                    f"{event.event_type} {event.event_id} never reached {service}"
                    " (no reaction, no dead letter)",
                )


@dataclass(frozen=True, slots=True)
class Backlog:
    durable: str
    stream: str
    pending: int  # never delivered
    unacked: int  # delivered, not acked yet


async def consumer_backlogs(js: Any) -> list[Backlog]:
    """What every service's durable consumer still has to take or ack (tools' readers and
    the benchmark's raw chain left out)."""
    backlogs = []
    for context in CONTEXTS:
        stream = subjects.stream_name(context)
        for info in await js.consumers_info(stream):
            durable = info.config.durable_name or ""
            if "__" not in durable or durable.startswith("raw_"):
                continue
            backlogs.append(Backlog(durable, stream, info.num_pending, info.num_ack_pending))
    return backlogs


def outbox_rows(data_dir: Path) -> int:
    """Events committed by the services under ``data_dir`` and not yet published."""
    rows = 0
    for name in SERVICE_NAMES:
        rows += _sqlite_outbox_rows(data_dir / f"{name}.db")
    return rows


def _sqlite_outbox_rows(path: Path) -> int:
    if not path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return int(db.execute("SELECT COUNT(*) FROM choreo_outbox").fetchone()[0])


async def _postgres_outbox_rows(url: str) -> int:
    try:
        connection = await asyncpg.connect(url)
    except asyncpg.InvalidCatalogNameError:
        return 0  # the database is not created yet: nothing committed there
    try:
        return int(await connection.fetchval("SELECT COUNT(*) FROM choreo_outbox"))
    except asyncpg.UndefinedTableError:
        return 0  # the service has not migrated yet
    finally:
        await connection.close()


async def database_outbox_rows(databases: Mapping[str, str]) -> int:
    """Unpublished events in the services' databases, given by URL (SQLite or Postgres)."""
    rows = 0
    for url in databases.values():
        if url.startswith(("postgresql:", "postgres:")):
            rows += await _postgres_outbox_rows(url)
        else:
            rows += _sqlite_outbox_rows(sqlite_path_of(url))
    return rows


async def wait_for_quiescence(
    js: Any,
    data_dir: Path,
    *,
    timeout_s: float = 30.0,
    interval_s: float = 0.2,
    databases: Mapping[str, str] | None = None,
) -> bool:
    """Wait until nothing is in flight: every consumer has acked everything and every outbox
    is empty, at two looks in a row (an event can move from an outbox to a stream between
    the two halves of one look). The invariants are about this state; a final order status
    alone does not mean the compensations around it (a refund, a release) have landed.
    False when ``timeout_s`` passed first; the audit then names what is still pending."""
    deadline = time.monotonic() + timeout_s
    quiet_looks = 0
    while time.monotonic() < deadline:
        # The services' databases: given by URL (``System.database_urls``, any store), or the
        # SQLite files under ``data_dir``.
        unpublished = (
            await database_outbox_rows(databases)
            if databases is not None
            else outbox_rows(data_dir)
        )
        busy = unpublished or any(b.pending or b.unacked for b in await consumer_backlogs(js))
        quiet_looks = 0 if busy else quiet_looks + 1
        if quiet_looks == 2:
            return True
        await asyncio.sleep(interval_s)
    return False


async def _check_consumers(report: AuditReport, js: Any) -> None:
    """5. Every durable consumer of every service has taken and acked everything (a message
    that could not be handled was dead-lettered, and then acked)."""
    for backlog in await consumer_backlogs(js):
        if backlog.pending or backlog.unacked:
            report.violated(
                5,
                "",
                f"consumer {backlog.durable} on {backlog.stream}: {backlog.pending} never"
                f" delivered, {backlog.unacked} delivered but not acked",
            )


async def _check_stock(report: AuditReport, address: str, catalog: Catalog) -> None:
    """2. Stock is conserved per SKU: initial = available + reserved + shipped."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub: inventory_grpc.InventoryServiceAsyncStub = inventory_grpc.InventoryServiceStub(
            channel
        )
        for sku, product in catalog.products.items():
            level = (
                await stub.GetStock(inventory_pb.GetStockRequest(sku=sku), timeout=10)
            ).stock_level
            total = level.available + level.reserved + level.shipped
            if total != product.initial_stock:
                report.violated(
                    2,
                    "",
                    f"{sku}: {level.available}+{level.reserved}+{level.shipped}"
                    f" != initial {product.initial_stock}",
                )
            if level.reserved:
                report.violated(2, "", f"{sku}: {level.reserved} still reserved at quiescence")


async def _check_cancelled_stock(
    report: AuditReport, address: str, cancelled: frozenset[str]
) -> None:
    """2. A cancelled order keeps no stock: none reserved, none counted as shipped out."""
    if not cancelled:
        return
    async with grpc.aio.insecure_channel(address) as channel:
        stub: inventory_grpc.InventoryServiceAsyncStub = inventory_grpc.InventoryServiceStub(
            channel
        )
        token = ""
        while True:
            page = await stub.ListReservations(
                inventory_pb.ListReservationsRequest(page_size=500, page_token=token), timeout=30
            )
            for reservation in page.reservations:
                if reservation.order_id in cancelled and reservation.status in (
                    inventory_pb.RESERVATION_STATUS_RESERVED,
                    inventory_pb.RESERVATION_STATUS_SHIPPED,
                ):
                    status = inventory_pb.ReservationStatus.Name(reservation.status)
                    report.violated(
                        2, reservation.order_id, f"cancelled, but its stock is {status}"
                    )
            token = page.next_page_token
            if not token:
                return
