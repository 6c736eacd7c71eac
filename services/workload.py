"""A mix of orders that walks every path of the saga, placed over gRPC like a real client.

Each path fails (or not) from real data in ``catalog/default.json``, never from a coin flip:
- happy: in-stock SKUs, a good token, a serviceable country;
- out of stock: more of SKU-RARE than will ever exist (stock 5);
- payment declined: a declined token, or a low-limit customer buying over the limit;
- unserviceable: a destination the shipping provider refuses (AQ).
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import grpc

from shop.common.v1 import address_pb2, order_line_pb2
from shop.order.v1 import order_service_pb2 as order_pb
from shop.order.v1 import order_service_pb2_grpc as order_grpc

FINAL = (order_pb.ORDER_STATUS_SHIPPED, order_pb.ORDER_STATUS_CANCELLED)
EVERYDAY_SKUS = ("SKU-MUG", "SKU-TEE", "SKU-CAP", "SKU-BOOK", "SKU-PEN", "SKU-BAG")


class SagaPath(enum.StrEnum):
    HAPPY = "happy"
    OUT_OF_STOCK = "out_of_stock"
    PAYMENT_DECLINED = "payment_declined"
    UNSERVICEABLE = "unserviceable"

    @property
    def expected_status(self) -> int:
        return (
            order_pb.ORDER_STATUS_SHIPPED
            if self is SagaPath.HAPPY
            else order_pb.ORDER_STATUS_CANCELLED
        )


def mixed_paths(count: int, seed: int, happy_share: float = 0.7) -> list[SagaPath]:
    """``count`` paths, every failure path at least once when count >= 4."""
    rng = random.Random(seed)
    failures = [SagaPath.OUT_OF_STOCK, SagaPath.PAYMENT_DECLINED, SagaPath.UNSERVICEABLE]
    paths = [SagaPath.HAPPY, *failures][: min(count, 4)]
    while len(paths) < count:
        paths.append(SagaPath.HAPPY if rng.random() < happy_share else rng.choice(failures))
    rng.shuffle(paths)
    return paths


def address(country: str = "US") -> address_pb2.Address:
    return address_pb2.Address(
        recipient_name="Ada Lovelace",
        line1="12 Analytical Row",
        city="London" if country == "GB" else "Springfield",
        postal_code="12345",
        country_code=country,
    )


def request_for(path: SagaPath, index: int, rng: random.Random) -> order_pb.PlaceOrderRequest:
    customer = f"cust-{index:06d}"
    token = "tok_visa"
    country = rng.choice(["US", "GB", "DE", "FR"])
    lines = [
        order_line_pb2.OrderLine(sku=sku, quantity=rng.randint(1, 2))
        for sku in rng.sample(EVERYDAY_SKUS, rng.randint(1, 2))
    ]
    if path is SagaPath.OUT_OF_STOCK:
        lines.append(order_line_pb2.OrderLine(sku="SKU-RARE", quantity=6))
    elif path is SagaPath.PAYMENT_DECLINED:
        if index % 2:
            token = "tok_declined_insufficient_funds"
        else:
            customer = "cust-low-limit"
            lines = [order_line_pb2.OrderLine(sku="SKU-LAMP", quantity=1)]
    elif path is SagaPath.UNSERVICEABLE:
        country = "AQ"
    return order_pb.PlaceOrderRequest(
        idempotency_key=str(uuid.uuid4()),
        customer_id=customer,
        lines=lines,
        currency_code="USD",
        shipping_address=address(country),
        payment_token=token,
    )


@dataclass
class Placed:
    order_id: str
    path: SagaPath
    placed_at: float
    finished_at: float | None = None
    status: int = order_pb.ORDER_STATUS_PENDING
    cancellation_reason: int = 0


async def place_all(
    stub: order_grpc.OrderServiceAsyncStub,
    paths: Iterable[SagaPath],
    *,
    concurrency: int,
    seed: int,
    on_placed: Callable[[Placed], None] | None = None,
    rate: float | None = None,
) -> list[Placed]:
    """Place every order, at most ``concurrency`` at a time (and ``rate`` per second)."""
    rng = random.Random(seed)
    requests = [(path, request_for(path, i, rng)) for i, path in enumerate(paths)]
    semaphore = asyncio.Semaphore(concurrency)
    placed: list[Placed] = []
    began = time.monotonic()

    async def place(index: int, path: SagaPath, request: order_pb.PlaceOrderRequest) -> None:
        if rate:
            await asyncio.sleep(max(0.0, began + index / rate - time.monotonic()))
        async with semaphore:
            started = time.monotonic()
            for attempt in range(8):
                try:
                    response = await stub.PlaceOrder(request, timeout=10)
                    break
                except grpc.aio.AioRpcError as exc:
                    # While the order service restarts: the idempotency key makes a retry safe.
                    retriable = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                    if exc.code() not in retriable or attempt == 7:
                        raise
                    await asyncio.sleep(0.5 * (attempt + 1))
            item = Placed(response.order.order_id, path, started)
            placed.append(item)
            if on_placed:
                on_placed(item)

    await asyncio.gather(*(place(i, path, req) for i, (path, req) in enumerate(requests)))
    return placed


async def wait_until_final(
    stub: order_grpc.OrderServiceAsyncStub,
    placed: list[Placed],
    *,
    timeout: float,
    on_progress: Callable[[int], None] | None = None,
) -> list[Placed]:
    """Poll ListOrders until every placed order is final and its customer told; returns the
    orders still not finished when the time ran out."""
    pending = {item.order_id: item for item in placed}
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        token = ""
        while True:
            try:
                page = await stub.ListOrders(
                    order_pb.ListOrdersRequest(page_size=500, page_token=token), timeout=10
                )
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.5)  # the order service may be restarting
                break
            now = time.monotonic()
            for order in page.orders:
                item = pending.get(order.order_id)
                if item and order.status in FINAL and order.customer_notified:
                    item.status, item.finished_at = order.status, now
                    item.cancellation_reason = order.cancellation_reason
                    del pending[order.order_id]
            token = page.next_page_token
            if not token:
                break
        if on_progress:
            on_progress(len(placed) - len(pending))
        if pending:
            await asyncio.sleep(0.2)
    return list(pending.values())


# A request larger than any valid one may be refused by its size, unread (RESOURCE_EXHAUSTED,
# choreo.request_limits), instead of INVALID_ARGUMENT naming its field: both leave no trace.
# Below the smallest receive limit any service has, every refusal must name its field.
REFUSED_BY_SIZE_ABOVE = 16 * 1024


def refused_as_it_should_be(
    code: grpc.StatusCode, fields: list[str], expected_field: str, size: int
) -> bool:
    """Invariant 6 for one bad request: INVALID_ARGUMENT naming the field, or refused unread
    by its size when it is larger than any valid request."""
    by_size = code == grpc.StatusCode.RESOURCE_EXHAUSTED and size > REFUSED_BY_SIZE_ABOVE
    return by_size or (code == grpc.StatusCode.INVALID_ARGUMENT and expected_field in fields)


def bad_requests() -> list[tuple[str, order_pb.PlaceOrderRequest, str]]:
    """(what is wrong, the request, the field the error must name)."""
    rng = random.Random(0)

    def valid() -> order_pb.PlaceOrderRequest:
        return request_for(SagaPath.HAPPY, 0, rng)

    cases: list[tuple[str, order_pb.PlaceOrderRequest, str]] = []
    no_lines = valid()
    del no_lines.lines[:]
    cases.append(("no lines", no_lines, "lines"))
    zero = valid()
    zero.lines[0].quantity = 0
    cases.append(("zero quantity", zero, "lines[0].quantity"))
    negative = valid()
    negative.lines[0].quantity = -3
    cases.append(("negative quantity", negative, "lines[0].quantity"))
    unknown = valid()
    unknown.lines[0].sku = "SKU-DOES-NOT-EXIST"
    cases.append(("unknown SKU", unknown, "lines[0].sku"))
    currency = valid()
    currency.currency_code = "usd$"
    cases.append(("bad currency", currency, "currency_code"))
    no_key = valid()
    no_key.idempotency_key = ""
    cases.append(("missing idempotency key", no_key, "idempotency_key"))
    oversized = valid()
    del oversized.lines[:]
    oversized.lines.extend(order_line_pb2.OrderLine(sku="SKU-PEN", quantity=1) for _ in range(101))
    cases.append(("oversized request (101 lines)", oversized, "lines"))
    # Fields that would be copied into every event of the saga: a request near the broker's
    # max_payload must be refused at the door, not wedge the relay after it was accepted.
    huge_customer = valid()
    huge_customer.customer_id = "c" * (1024 * 1024)
    cases.append(("customer id of 1 MiB", huge_customer, "customer_id"))
    near_limit = valid()
    near_limit.shipping_address.line1 = "x" * (1024 * 1024 - 600)
    cases.append(("address line just under 1 MiB", near_limit, "shipping_address.line1"))
    long_token = valid()
    long_token.payment_token = "tok_" + "9" * 10_000
    cases.append(("payment token of 10,000 characters", long_token, "payment_token"))
    nul = valid()
    nul.shipping_address.recipient_name = "Al\x00ice"
    cases.append(("NUL in the recipient's name", nul, "shipping_address.recipient_name"))
    return cases
