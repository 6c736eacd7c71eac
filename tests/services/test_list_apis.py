"""The operator's List RPCs (AIP-158 pages) and gRPC reflection v1 beside v1alpha, over real gRPC
against the five services running a few sagas on a real nats-server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from choreo.grpc_errors import field_violations
from choreo.testing import wait_for
from services.audit import wait_for_quiescence
from services.workload import SagaPath
from shop.inventory.v1 import inventory_service_pb2 as inventory_pb
from shop.inventory.v1 import inventory_service_pb2_grpc as inventory_grpc
from shop.notification.v1 import notification_service_pb2 as notification_pb
from shop.notification.v1 import notification_service_pb2_grpc as notification_grpc
from shop.payment.v1 import payment_service_pb2 as payment_pb
from shop.payment.v1 import payment_service_pb2_grpc as payment_grpc
from shop.shipping.v1 import shipping_service_pb2 as shipping_pb
from shop.shipping.v1 import shipping_service_pb2_grpc as shipping_grpc
from tests.services import channel
from tests.services.saga_harness import Saga, saga

__all__ = ["saga"]  # the fixture

List = Callable[[int, str], Awaitable[tuple[list[Any], str]]]


@pytest.fixture
async def ended(saga: Saga, js: Any) -> dict[str, str]:
    """Five sagas that ended: three shipped, one declined, one unserviceable; and everything
    they set off has landed."""
    await saga.start()
    orders = {await saga.place(): "shipped" for _ in range(3)}
    orders[await saga.place(SagaPath.PAYMENT_DECLINED)] = "declined"
    orders[await saga.place(country="AQ")] = "unserviceable"

    async def all_ended() -> bool:
        states = [await saga.order(order_id) for order_id in orders]
        return all(o.status.is_final and o.customer_notified for o in states)

    await wait_for(all_ended, timeout=30, what="the five sagas to end")
    # Ended is final and told; inventory's release or shipment and payment's refund answer
    # events off that path and may still be on their way. The listings below show them.
    assert await wait_for_quiescence(js, saga.tmp_path, timeout_s=30), "the services never settled"
    return orders


async def every_page(list_page: List, page_size: int) -> tuple[list[Any], int]:
    """Follow next_page_token to the end: every item, and how many pages it took."""
    items: list[Any] = []
    token, pages = "", 0
    while True:
        page, token = await list_page(page_size, token)
        items += page
        pages += 1
        assert len(page) <= page_size
        if not token:
            return items, pages


async def newest_first(s: Saga, service: str, table: str) -> list[str]:
    """Order ids of ``table`` as the service's own database orders them, newest first."""
    async with s.runtimes[service].db.read() as tx:
        rows = await tx.fetchall(
            f"SELECT order_id FROM {table} ORDER BY created_at DESC, order_id DESC"
        )
    return [str(row[0]) for row in rows]


async def refuses(call: Awaitable[Any]) -> list[str]:
    """The fields an INVALID_ARGUMENT names."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return [field for field, _ in field_violations(caught.value)]


async def test_stock_and_reservations_are_listed_in_pages(
    saga: Saga, ended: dict[str, str]
) -> None:
    async with channel(saga.runtimes["inventory"].grpc_port) as ch:
        stub = inventory_grpc.InventoryServiceStub(ch)

        async def stock(size: int, token: str) -> tuple[list[Any], str]:
            r = await stub.ListStock(
                inventory_pb.ListStockRequest(page_size=size, page_token=token)
            )
            return list(r.stock_levels), r.next_page_token

        async def reservations(size: int, token: str) -> tuple[list[Any], str]:
            r = await stub.ListReservations(
                inventory_pb.ListReservationsRequest(page_size=size, page_token=token)
            )
            return list(r.reservations), r.next_page_token

        levels, pages = await every_page(stock, 2)
        expected = sorted(level.sku for level in await saga.stock())
        assert [level.sku for level in levels] == expected  # by SKU, each once
        assert pages == -(-len(expected) // 2)
        for level in levels:
            got = await stub.GetStock(inventory_pb.GetStockRequest(sku=level.sku))
            assert got.stock_level == level

        listed, _ = await every_page(reservations, 2)
        # Every order reserved its stock (none ran out), newest first.
        assert sorted(r.order_id for r in listed) == sorted(ended)
        assert [r.order_id for r in listed] == await newest_first(saga, "inventory", "reservations")
        status = {r.order_id: r.status for r in listed}
        assert {status[o] for o, end in ended.items() if end == "shipped"} == {
            inventory_pb.RESERVATION_STATUS_SHIPPED
        }
        assert {status[o] for o, end in ended.items() if end != "shipped"} == {
            inventory_pb.RESERVATION_STATUS_RELEASED
        }

        assert await refuses(stub.ListStock(inventory_pb.ListStockRequest(page_size=501))) == [
            "page_size"
        ]
        assert await refuses(
            stub.ListReservations(inventory_pb.ListReservationsRequest(page_token="bm9wZQ"))
        ) == ["page_token"]
        assert await refuses(stub.ListStock(inventory_pb.ListStockRequest(page_token="a b"))) == [
            "page_token"
        ]


async def test_payments_and_shipments_are_listed_newest_first_in_pages(
    saga: Saga, ended: dict[str, str]
) -> None:
    async with channel(saga.runtimes["payment"].grpc_port) as ch:
        stub = payment_grpc.PaymentServiceStub(ch)

        async def payments(size: int, token: str) -> tuple[list[Any], str]:
            r = await stub.ListPayments(
                payment_pb.ListPaymentsRequest(page_size=size, page_token=token)
            )
            return list(r.payments), r.next_page_token

        listed, pages = await every_page(payments, 2)
        recent = await newest_first(saga, "payment", "payments")
        assert sorted(recent) == sorted(ended)
        assert [p.order_id for p in listed] == recent
        assert pages == 3
        by_order = {p.order_id: p.status for p in listed}
        assert {by_order[o] for o, e in ended.items() if e == "shipped"} == {
            payment_pb.PAYMENT_STATUS_COMPLETED
        }
        declined = next(o for o, e in ended.items() if e == "declined")
        refunded = next(o for o, e in ended.items() if e == "unserviceable")
        assert by_order[declined] == payment_pb.PAYMENT_STATUS_FAILED
        assert by_order[refunded] == payment_pb.PAYMENT_STATUS_REFUNDED
        # page_size 0 is the default page (50), which holds them all.
        whole = await stub.ListPayments(payment_pb.ListPaymentsRequest())
        assert ([p.order_id for p in whole.payments], whole.next_page_token) == (recent, "")
        assert await refuses(stub.ListPayments(payment_pb.ListPaymentsRequest(page_size=-1))) == [
            "page_size"
        ]
        assert await refuses(
            stub.ListPayments(payment_pb.ListPaymentsRequest(page_token="WyJ4Il0="))
        ) == ["page_token"]  # a token of the wrong shape (one key, not two)

    async with channel(saga.runtimes["shipping"].grpc_port) as ch:
        ship_stub = shipping_grpc.ShippingServiceStub(ch)

        async def shipments(size: int, token: str) -> tuple[list[Any], str]:
            r = await ship_stub.ListShipments(
                shipping_pb.ListShipmentsRequest(page_size=size, page_token=token)
            )
            return list(r.shipments), r.next_page_token

        listed, _ = await every_page(shipments, 1)
        paid = await newest_first(saga, "shipping", "shipments")
        assert sorted(paid) == sorted(o for o, e in ended.items() if e != "declined")
        assert [s.order_id for s in listed] == paid
        failed = [s.order_id for s in listed if s.status == shipping_pb.SHIPMENT_STATUS_FAILED]
        assert failed == [o for o in paid if ended[o] == "unserviceable"]
        assert await refuses(
            ship_stub.ListShipments(shipping_pb.ListShipmentsRequest(page_size=100000))
        ) == ["page_size"]


async def test_notifications_without_a_filter_are_the_most_recent_in_pages(
    saga: Saga, ended: dict[str, str]
) -> None:
    async with channel(saga.runtimes["notification"].grpc_port) as ch:
        stub = notification_grpc.NotificationServiceStub(ch)

        async def recent(size: int, token: str) -> tuple[list[Any], str]:
            r = await stub.ListNotifications(
                notification_pb.ListNotificationsRequest(page_size=size, page_token=token)
            )
            return list(r.notifications), r.next_page_token

        listed, pages = await every_page(recent, 2)
        assert sorted(n.order_id for n in listed) == sorted(ended)  # one per saga
        assert pages == 3
        sent = [(n.sent_at.seconds, n.sent_at.nanos) for n in listed]
        assert sent == sorted(sent, reverse=True)  # newest first
        assert await refuses(
            stub.ListNotifications(notification_pb.ListNotificationsRequest(page_token="bm9wZQ"))
        ) == ["page_token"]


def _v1_reflection(ch: grpc.aio.Channel) -> Any:
    # v1's messages are v1alpha's on the wire (the same schema in another package).
    return ch.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )


async def _ask(call: Any, request: reflection_pb2.ServerReflectionRequest) -> Any:
    async for response in call(iter([request])):
        return response
    raise AssertionError("no reflection response")


async def test_reflection_answers_in_v1_and_v1alpha(saga: Saga) -> None:
    await saga.start("payment")
    async with channel(saga.runtimes["payment"].grpc_port) as ch:
        calls = {
            "v1alpha": reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo,
            "v1": _v1_reflection(ch),
        }
        for version, call in calls.items():
            listed = await _ask(call, reflection_pb2.ServerReflectionRequest(list_services=""))
            names = {s.name for s in listed.list_services_response.service}
            assert {
                "shop.payment.v1.PaymentService",
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
            } <= names, version
            for symbol, package in [
                ("shop.payment.v1.PaymentService", "shop.payment.v1"),
                ("grpc.reflection.v1.ServerReflection", "grpc.reflection.v1"),
            ]:
                found = await _ask(
                    call, reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
                )
                files = [
                    descriptor_pb2.FileDescriptorProto.FromString(raw)
                    for raw in found.file_descriptor_response.file_descriptor_proto
                ]
                assert package in {f.package for f in files}, (version, symbol)
            missing = await _ask(
                call, reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.Such")
            )
            assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
