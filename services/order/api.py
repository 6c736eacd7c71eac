"""The order service's gRPC port: proto ⇄ domain, domain outcomes ⇄ status codes. Nothing else.

Errors clients see:

- ``INVALID_ARGUMENT`` for bytes that are not a request message, and for a request that breaks a
  rule declared in the contract (``buf.validate`` options: lengths, allowed characters, counts,
  ranges); both are answered at the door (``choreo.validation``) before a method runs.
- ``INVALID_ARGUMENT`` with a ``google.rpc.BadRequest`` naming every offending field (read them
  with ``choreo.grpc_errors.field_violations``); a refused request changes nothing.
- ``INVALID_ARGUMENT`` on ``idempotency_key`` when a key is reused for a *different* request.
  Not ``ALREADY_EXISTS``: the client's request is wrong (the key must be fresh for a new order),
  the field to fix is the key, and a retry of the very same request is never refused.
- ``NOT_FOUND`` for an order id this service does not know.
- ``DEADLINE_EXCEEDED`` when a ``WatchOrder`` stream reaches its time bound before the order
  is final; call ``WatchOrder`` again to keep following it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from choreo import validation
from choreo.grpc_errors import abort_invalid, abort_not_found
from choreo.request_limits import count_violations, repeated_limits
from choreo.sealing import SealingKey
from choreo.service import ServiceRuntime
from services import payment_token
from services.catalog import Catalog
from services.order import mapping, store
from services.order.domain import (
    Created,
    KeyReused,
    Order,
    OrderStatus,
    Replayed,
    as_of,
    decide_place_order,
    new_order,
    validate_place_order,
)
from shop.order.v1 import order_service_pb2 as pb
from shop.order.v1 import order_service_pb2_grpc as pb_grpc

DEFAULT_PAGE_SIZE = 50
WATCH_POLL_S = 0.05
WATCH_LIMIT_S = 600.0

Context = grpc.aio.ServicerContext


class OrderApi(pb_grpc.OrderServiceServicer):
    def __init__(
        self,
        runtime: ServiceRuntime,
        catalog: Catalog,
        token_key: SealingKey,
        *,
        watch_poll_s: float = WATCH_POLL_S,
        watch_limit_s: float = WATCH_LIMIT_S,
        order_created_versions: tuple[int, ...] = (1,),
    ) -> None:
        self._runtime = runtime
        self._order_created_versions = order_created_versions
        self._catalog = catalog
        self._token_key = token_key
        self._watch_poll_s = watch_poll_s
        self._watch_limit_s = watch_limit_s

    async def PlaceOrder(
        self, request: pb.PlaceOrderRequest, context: Context
    ) -> pb.PlaceOrderResponse:
        """Place an order, once per idempotency key.

        The contract's rules (lengths, characters, counts) were checked at the door; the domain
        then checks what needs the catalog (known SKUs, its currency) and blank-only text.

        The same key with the same request returns the order placed the first time and
        publishes nothing; the same key with a different request is ``INVALID_ARGUMENT`` on
        ``idempotency_key``. Prices come from the catalog; unit prices in the request are
        ignored. The order row and its ``OrderCreated`` commit in one transaction.
        """
        command = mapping.place_order_from_proto(request)
        violations = validate_place_order(command, self._catalog)
        if violations:
            await abort_invalid(context, [(v.field, v.description) for v in violations])
        order_id = str(uuid.uuid4())
        draft = new_order(order_id, command, self._catalog, datetime.now(UTC), order_id)
        # Sealed for the payment service alone: only the sealed text goes on the bus.
        sealed_token = payment_token.seal(self._token_key, order_id, command.payment_token)
        outcome = await self._place(draft, sealed_token)
        if isinstance(outcome, KeyReused):
            violation = outcome.violation
            await abort_invalid(context, [(violation.field, violation.description)])
        order = outcome.order if isinstance(outcome, Replayed) else draft
        return pb.PlaceOrderResponse(order=mapping.order_to_proto(order))

    async def _place(self, draft: Order, payment_token: str) -> Created | Replayed | KeyReused:
        async with self._runtime.unit_of_work(correlation_id=draft.order_id) as uow:
            key = draft.idempotency_key
            existing = await store.load_order_by_key(uow.tx, key)
            outcome = decide_place_order(existing, draft.request_fingerprint)
            if not isinstance(outcome, Created):
                return outcome
            if await store.insert_order(uow.tx, draft):
                # One event per schema version the setting asks for (the same fact, v1 first).
                created = mapping.order_created(draft, payment_token)
                for event in mapping.order_created_versions(created, self._order_created_versions):
                    uow.emit(event, aggregate_id=draft.order_id)
                return outcome
            # A concurrent call with the same key won the unique index (Postgres waits for it
            # to commit, then the re-read sees its row): answer as if we had come second.
            existing = await store.load_order_by_key(uow.tx, key)
            if existing is None:
                raise RuntimeError(f"order {draft.order_id} clashed on insert but is not there")
            return decide_place_order(existing, draft.request_fingerprint)

    async def GetOrder(self, request: pb.GetOrderRequest, context: Context) -> pb.GetOrderResponse:
        order = await self._existing_order(request.order_id, context)
        return pb.GetOrderResponse(order=mapping.order_to_proto(order))

    async def ListOrders(
        self, request: pb.ListOrdersRequest, context: Context
    ) -> pb.ListOrdersResponse:
        """Newest first; ``page_size`` 0 means 50, at most 500 (a declared rule); an optional
        status filter."""
        status: OrderStatus | None = None
        if request.HasField("status"):
            status = mapping.status_from_proto(request.status)
            if status is None:
                # The contract refuses UNSPECIFIED and unknown numbers; this is a status added to
                # the contract that this code does not map yet.
                names = ", ".join(f"ORDER_STATUS_{s.value}" for s in OrderStatus)
                violation = ("status", f"must be one of {names}, or left unset for all")
                await abort_invalid(context, [violation])
        try:
            async with self._runtime.db.read() as tx:
                page = await store.list_orders(
                    tx,
                    page_size=request.page_size or DEFAULT_PAGE_SIZE,
                    page_token=request.page_token,
                    status=status,
                    newest_first=True,
                )
        except store.InvalidPageToken as exc:
            await abort_invalid(context, [("page_token", str(exc))])
        return pb.ListOrdersResponse(
            orders=[mapping.order_to_proto(order) for order in page.orders],
            next_page_token=page.next_page_token,
        )

    async def WatchOrder(
        self, request: pb.WatchOrderRequest, context: Context
    ) -> AsyncIterator[pb.WatchOrderResponse]:
        """The order now, then one message per status change (and when the customer was told),
        until it is final and notified; intermediate states missed between polls are replayed
        from the order's history so no status is skipped."""
        order_id = request.order_id
        async with self._runtime.db.read() as tx:
            order = await store.load_order(tx, order_id)
            seen = await store.history(tx, order_id)
        if order is None:
            await abort_not_found(context, f"order {order_id!r}")
        last_seq = seen[-1].seq if seen else 0
        yield pb.WatchOrderResponse(order=mapping.order_to_proto(order))
        deadline = asyncio.get_running_loop().time() + self._watch_limit_s
        while not (order.status.is_final and order.customer_notified):
            if asyncio.get_running_loop().time() >= deadline:
                await context.abort(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"watched order {order_id} for {self._watch_limit_s:.0f}s without it"
                    " reaching a final state: call WatchOrder again to keep following it",
                )
            await asyncio.sleep(self._watch_poll_s)
            async with self._runtime.db.read() as tx:
                current = await store.load_order(tx, order_id)
                entries = await store.history(tx, order_id, after_seq=last_seq)
            if current is None:
                await abort_not_found(context, f"order {order_id!r}")
            for entry in entries[:-1]:
                earlier = as_of(current, entry.status, entry.at)
                yield pb.WatchOrderResponse(order=mapping.order_to_proto(earlier))
            if entries or current.customer_notified != order.customer_notified:
                yield pb.WatchOrderResponse(order=mapping.order_to_proto(current))
            if entries:
                last_seq = entries[-1].seq
            order = current

    async def _existing_order(self, order_id: str, context: Context) -> Order:
        async with self._runtime.db.read() as tx:
            order = await store.load_order(tx, order_id)
        if order is None:
            await abort_not_found(context, f"order {order_id!r}")
        return order


@dataclass(frozen=True)
class TooManyItems:
    """What the deserializer hands on for a request with more items in a repeated field than
    its rules allow: refused on the count, before any item is validated."""

    violations: list[tuple[str, str]]


class _CountGuard:
    """Wraps a method's handler: counts first (as cheap as ``len``), then the full validation.

    A request that cannot be valid must cost no more than a few milliseconds: the full
    validation of 30,000 empty lines (what fits in the receive limit) takes long enough to
    delay every other call on the event loop, its count does not."""

    def __init__(self, service: ServiceDescriptor) -> None:
        self._limits = {
            method.name: repeated_limits(method.input_type) for method in service.methods
        }

    def wrap(self, name: str, handler: Any) -> Any:
        limits = self._limits.get(name)
        if not limits or handler is None or handler.request_deserializer is None:
            return handler
        decode = handler.request_deserializer

        def deserialize(data: bytes) -> object:
            request = decode(data)
            if isinstance(request, Message):
                found = count_violations(request, limits)
                if found:
                    return TooManyItems(found)
            return request

        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def serve(request: object, context: Context) -> Any:
                if isinstance(request, TooManyItems):
                    await abort_invalid(context, request.violations)
                return await unary(request, context)

            return handler._replace(request_deserializer=deserialize, unary_unary=serve)
        stream = handler.unary_stream

        async def serve_stream(request: object, context: Context) -> Any:
            if isinstance(request, TooManyItems):
                await abort_invalid(context, request.violations)
            async for response in stream(request, context):
                yield response

        return handler._replace(request_deserializer=deserialize, unary_stream=serve_stream)


class _GenericGuard(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler, guard: _CountGuard) -> None:
        self._inner = inner
        self._guard = guard

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = self._inner.service(handler_call_details)
        method = str(getattr(handler_call_details, "method", "")).rsplit("/", 1)[-1]
        return self._guard.wrap(method, handler)


class _GuardedServer:
    """The server as :func:`validation.add_servicer` sees it: every handler it registers
    gets the count guard in front."""

    def __init__(self, server: grpc.aio.Server, guard: _CountGuard) -> None:
        self._server = server
        self._guard = guard

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_GenericGuard(handler, self._guard) for handler in handlers)
        )

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self._server.add_registered_method_handlers(
            service, {name: self._guard.wrap(name, h) for name, h in handlers.items()}
        )


def add_to_server(
    server: grpc.aio.Server,
    runtime: ServiceRuntime,
    catalog: Catalog,
    token_key: SealingKey,
    order_created_versions: tuple[int, ...] = (1,),
) -> None:
    # Every request is decoded and checked against its declared rules before a method runs;
    # a repeated field over its max_items is refused on its count before that.
    service = pb.DESCRIPTOR.services_by_name["OrderService"]
    validation.add_servicer(
        cast("grpc.aio.Server", _GuardedServer(server, _CountGuard(service))),
        service,
        OrderApi(runtime, catalog, token_key, order_created_versions=order_created_versions),
    )
