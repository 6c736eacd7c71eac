"""``choreo order ...``: a small gRPC client of the order service, for people and scripts."""

from __future__ import annotations

import argparse
import json
import uuid
from typing import cast

import grpc

from choreo.errors import ConfigurationError
from choreo.grpc_tls import open_channel
from choreo.status import resolve_address
from choreo.telemetry import configure_tracing, shutdown_tracing
from shop.common.v1 import address_pb2, order_line_pb2
from shop.order.v1 import order_service_pb2 as pb
from shop.order.v1 import order_service_pb2_grpc as pb_grpc


def tls_refused(exc: grpc.aio.AioRpcError) -> bool:
    """An UNAVAILABLE that is a TLS mismatch (plaintext against TLS, an untrusted or missing
    certificate), not a service that is down."""
    details = (exc.details() or "").lower()
    # A TLS server closes a plaintext connection at once; a server that is down refuses it.
    hints = ("ssl", "tls", "handshake", "certificate", "socket closed")
    return any(word in details for word in hints)


def describe(order: pb.Order) -> str:
    status = pb.OrderStatus.Name(order.status).removeprefix("ORDER_STATUS_")
    lines = ", ".join(f"{line.sku}x{line.quantity}" for line in order.lines)
    text = (
        f"{order.order_id}  {status:<9} {order.total.amount_minor / 100:>10.2f}"
        f" {order.total.currency_code}  [{lines}]"
    )
    if order.cancellation_detail:
        text += f"  ({order.cancellation_detail})"
    if order.tracking_id:
        text += f"  tracking {order.tracking_id}"
    if order.customer_notified:
        text += "  customer notified"
    return text


def parse_line(raw: str) -> order_line_pb2.OrderLine:
    sku, _, quantity = raw.partition(":")
    if not sku or not quantity.isdigit():
        raise ConfigurationError(f"--line {raw!r}: write SKU:QUANTITY, e.g. --line SKU-MUG:2")
    return order_line_pb2.OrderLine(sku=sku, quantity=int(quantity))


def place_request(args: argparse.Namespace) -> pb.PlaceOrderRequest:
    return pb.PlaceOrderRequest(
        idempotency_key=args.idempotency_key or str(uuid.uuid4()),
        customer_id=args.customer,
        lines=[parse_line(raw) for raw in args.line],
        currency_code=args.currency,
        shipping_address=address_pb2.Address(
            recipient_name=args.customer,
            line1="1 Main Street",
            city="Springfield",
            postal_code="12345",
            country_code=args.country,
        ),
        payment_token=args.token,
    )


async def watch(stub: pb_grpc.OrderServiceAsyncStub, order_id: str) -> None:
    async for update in stub.WatchOrder(pb.WatchOrderRequest(order_id=order_id)):
        print(describe(update.order), flush=True)


async def run_order_command(args: argparse.Namespace) -> int:
    configure_tracing("cli")  # the OTEL_* variables, as for the services
    try:
        return await _order_command(args)
    finally:
        shutdown_tracing()


def order_json(order: pb.Order) -> dict[str, object]:
    return {
        "order_id": order.order_id,
        "status": pb.OrderStatus.Name(order.status).removeprefix("ORDER_STATUS_"),
        "customer_id": order.customer_id,
        "total_minor": order.total.amount_minor,
        "currency": order.total.currency_code,
        "lines": [{"sku": line.sku, "quantity": line.quantity} for line in order.lines],
        "cancellation_detail": order.cancellation_detail,
        "tracking_id": order.tracking_id,
        "customer_notified": order.customer_notified,
    }


async def _order_command(args: argparse.Namespace) -> int:
    address = resolve_address(args.address, "CHOREO_ORDER_ADDRESS", "order", args.data_dir)
    async with open_channel(address) as channel:
        stub = cast("pb_grpc.OrderServiceAsyncStub", pb_grpc.OrderServiceStub(channel))
        try:
            if args.order_command == "place":
                response = await stub.PlaceOrder(place_request(args), timeout=10)
                print(describe(response.order))
                if args.watch:
                    await watch(stub, response.order.order_id)
            elif args.order_command == "get":
                got = await stub.GetOrder(pb.GetOrderRequest(order_id=args.order_id), timeout=10)
                print(describe(got.order))
            elif args.order_command == "watch":
                await watch(stub, args.order_id)
            elif args.order_command == "list":
                request = pb.ListOrdersRequest(page_size=args.limit)
                if args.status:
                    request.status = pb.OrderStatus.Value(f"ORDER_STATUS_{args.status.upper()}")
                listed = await stub.ListOrders(request, timeout=10)
                if args.json:
                    print(json.dumps([order_json(order) for order in listed.orders], indent=2))
                else:
                    for order in listed.orders:
                        print(describe(order))
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE and tls_refused(exc):
                raise ConfigurationError(
                    f"the order service at {address} refused the connection ({exc.details()}):"
                    " it likely serves TLS or mTLS that this client does not speak; next to"
                    " `choreo up --tls` pass its --data-dir, elsewhere set"
                    " CHOREO_GRPC_TLS_CA_FILE (and CHOREO_GRPC_TLS_CLIENT_CERT_FILE / _KEY_FILE"
                    " for mTLS)"
                ) from None
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                raise ConfigurationError(
                    f"no order service at {address}: start the system with `choreo up`"
                    " or pass --address / CHOREO_ORDER_ADDRESS"
                ) from None
            print(f"{exc.code().name}: {exc.details()}")
            return 1
    return 0
