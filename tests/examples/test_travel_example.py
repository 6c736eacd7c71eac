"""examples/travel: a second choreography, a trip booking, in three proto packages of its own
(acme.booking.v1, acme.flights.v1, acme.hotels.v1). Its three services run as real processes
(`choreo serve NAME --app acme_travel.NAME.service:build`) on a real nats-server and SQLite
files, with nothing of the order saga in them; the saga's shape (start event, final events,
compensations) is declared on TripRequested in the contracts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from acme.booking.v1 import booking_service_pb2 as booking_pb
from acme.booking.v1 import booking_service_pb2_grpc as booking_grpc
from acme.booking.v1 import events_pb2 as booking_events
from acme.flights.v1 import flights_service_pb2 as flights_pb
from acme.flights.v1 import flights_service_pb2_grpc as flights_grpc
from acme.hotels.v1 import events_pb2 as hotels_events
from acme.hotels.v1 import hotels_service_pb2 as hotels_pb
from acme.hotels.v1 import hotels_service_pb2_grpc as hotels_grpc
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from acme_travel import CONTRACTS, SOLD_OUT
from acme_travel.booking import domain as booking_domain
from acme_travel.flights import domain as flights_domain
from acme_travel.hotels import domain as hotels_domain
from choreo import grpc_errors
from choreo.broker import EmbeddedBroker, free_port
from choreo.supervisor import ProcessSpec, Supervisor
from choreo.testing import publish_event, wait_for
from tests.examples import TRAVEL, TRAVEL_PATHS

ROOT = TRAVEL.parents[1]
BIN = Path(sys.executable).parent
CHOREO = str(BIN / "choreo")
SERVICES = ("booking", "flights", "hotels")
# What an operator's tools are told so that they know the travel contracts.
CONTRACTS_ENV = {"CHOREO_CONTRACTS": ",".join(CONTRACTS)}

HAPPY = [
    "acme.booking.v1.TripRequested",
    "acme.flights.v1.SeatHeld",
    "acme.booking.v1.TripFlightHeld",
    "acme.hotels.v1.RoomBooked",
    "acme.booking.v1.TripConfirmed",
]
# The last step fails: the hotel is full, so the held seat is released, then the trip cancelled.
HOTEL_FULL = [
    "acme.booking.v1.TripRequested",
    "acme.flights.v1.SeatHeld",
    "acme.booking.v1.TripFlightHeld",
    "acme.hotels.v1.RoomUnavailable",
    "acme.flights.v1.SeatReleased",
    "acme.booking.v1.TripCancelled",
]
# The first step fails: nothing was held, so there is nothing to undo.
FLIGHT_FULL = [
    "acme.booking.v1.TripRequested",
    "acme.flights.v1.SeatUnavailable",
    "acme.booking.v1.TripCancelled",
]


def env_with_travel(**extra: str) -> dict[str, str]:
    """This environment, with the travel example's code on the path (as its teams' installs
    would put it) and this venv's tools (protoc-gen-mypy) on PATH."""
    return {
        **os.environ,
        "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join(TRAVEL_PATHS),
        **extra,
    }


def service_spec(name: str, nats_url: str, data_dir: Path) -> ProcessSpec:
    """One travel service as its team deploys it: the runtime's CLI, their composition root,
    their own database."""
    port = free_port("127.0.0.1")
    return ProcessSpec(
        name=name,
        argv=[CHOREO, "serve", name, "--app", f"acme_travel.{name}.service:build"],
        env={
            "PYTHONPATH": os.pathsep.join(TRAVEL_PATHS),
            "CHOREO_NATS_URL": nats_url,
            "CHOREO_DATABASE_URL": f"sqlite:///{data_dir / f'{name}.db'}",
            "CHOREO_GRPC_HOST": "127.0.0.1",
            "CHOREO_GRPC_PORT": str(port),
        },
        grpc_address=f"127.0.0.1:{port}",
        log_path=data_dir / f"{name}.log",
    )


# --- the rules, without I/O ---------------------------------------------------------------


@pytest.mark.unit
def test_seats_and_rooms_go_first_free_first_and_the_sold_out_ones_have_none() -> None:
    assert flights_domain.hold("t-1", "TR1", set()).seat == "1A"
    assert flights_domain.hold("t-2", "TR1", {"1A", "1B"}).seat == "1C"
    full = flights_domain.hold("t-3", SOLD_OUT, set())
    assert (full.seat, full.status) == ("", flights_domain.Status.UNAVAILABLE)
    every_seat = set(flights_domain.seats_of("TR1"))
    assert flights_domain.hold("t-4", "TR1", every_seat).status is flights_domain.Status.UNAVAILABLE

    held = flights_domain.hold("t-1", "TR1", set())
    released = flights_domain.release(held)
    assert released is not None and released.status is flights_domain.Status.RELEASED
    assert flights_domain.release(released) is None  # nothing held any more: nothing to undo
    assert flights_domain.release(full) is None

    assert hotels_domain.book("t-1", "grand", 2, {"101"}).room == "102"
    assert hotels_domain.book("t-2", SOLD_OUT, 2, set()).status is hotels_domain.Status.UNAVAILABLE


@pytest.mark.unit
def test_a_trip_moves_one_step_per_event_and_ignores_events_out_of_place() -> None:
    trip = booking_domain.Trip("t-1", "alice", "TR1", "grand", 3)
    held = booking_domain.on_seat_held(trip, "1A")
    assert held is not None and held.status is booking_domain.Status.FLIGHT_HELD
    assert booking_domain.on_seat_held(held, "1B") is None
    assert booking_domain.on_seat_unavailable(held, "full") is None  # too late to be refused

    cancelled = booking_domain.on_seat_released(held)
    assert cancelled is not None and cancelled.status is booking_domain.Status.CANCELLED
    assert cancelled.reason is booking_domain.Reason.HOTEL_UNAVAILABLE
    assert booking_domain.on_room_booked(cancelled, "101") is None  # cancelled is final

    confirmed = booking_domain.on_room_booked(held, "101")
    assert confirmed is not None and (confirmed.seat, confirmed.room) == ("1A", "101")


# --- the contracts ------------------------------------------------------------------------


def test_the_generated_code_is_what_the_travel_protos_generate() -> None:
    result = subprocess.run(
        [str(TRAVEL / "gen.sh"), "--check"],
        env=env_with_travel(PYTHON=sys.executable),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def travel_flow() -> str:
    """``choreo flow`` with the travel packages, only the travel graph's lines kept (the
    reference system's contracts, installed in this venv, are drawn too)."""
    contracts = [arg for package in CONTRACTS for arg in ("--contracts", package)]
    result = subprocess.run(
        [CHOREO, "flow", *contracts],
        env=env_with_travel(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    return "\n".join([lines[0], *(line for line in lines if "acme_" in line)]) + "\n"


def test_choreo_flow_draws_the_travel_graph_from_its_contracts() -> None:
    flow = travel_flow()
    for edge in (
        "acme_booking_v1_BookingService_BookTrip --> acme_booking_v1_TripRequested",
        "acme_booking_v1_TripRequested -->|flights| acme_flights_v1_SeatHeld",
        "acme_booking_v1_TripRequested -->|flights| acme_flights_v1_SeatUnavailable",
        "acme_flights_v1_SeatHeld -->|booking| acme_booking_v1_TripFlightHeld",
        "acme_booking_v1_TripFlightHeld -->|hotels| acme_hotels_v1_RoomUnavailable",
        "acme_hotels_v1_RoomUnavailable -->|flights| acme_flights_v1_SeatReleased",
        "acme_flights_v1_SeatReleased -->|booking| acme_booking_v1_TripCancelled",
        "acme_hotels_v1_RoomBooked -->|booking| acme_booking_v1_TripConfirmed",
    ):
        assert f"    {edge}\n" in flow
    assert flow.count("-->") == 10  # BookTrip, and nine arrows of the seven reactions


def test_the_docs_show_the_graph_choreo_flow_draws() -> None:
    page = (ROOT / "docs" / "examples.md").read_text()
    blocks = re.findall(r"```mermaid\n(.*?)```", page, flags=re.DOTALL)
    assert travel_flow() in blocks, "docs/examples.md: paste the output of the flow command"


# --- the three services as processes --------------------------------------------------------


@dataclass
class Travel:
    nats_url: str
    addresses: dict[str, str]  # service name -> host:port of its gRPC API
    data_dir: Path


@pytest.fixture(scope="module")
def travel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Travel]:
    """A nats-server and the three travel services, each a process of its own."""
    data_dir = tmp_path_factory.mktemp("travel")
    broker = EmbeddedBroker(store_dir=data_dir / "jetstream", log_file=data_dir / "nats.log")
    broker.start()
    supervisor = Supervisor([service_spec(name, broker.url, data_dir) for name in SERVICES])
    try:
        asyncio.run(supervisor.start_all(timeout=60))
        addresses = {}
        for name in SERVICES:
            address = supervisor.processes[name].spec.grpc_address
            assert address is not None
            addresses[name] = address
        yield Travel(broker.url, addresses, data_dir)
        codes = supervisor.stop_all()
        assert codes == dict.fromkeys(SERVICES, 0), f"unclean shutdown: {codes}"
    finally:
        supervisor.stop_all()
        broker.stop()


async def book_trip(travel: Travel, flight: str, hotel: str) -> str:
    async with grpc.aio.insecure_channel(travel.addresses["booking"]) as channel:
        booking: booking_grpc.BookingServiceAsyncStub = booking_grpc.BookingServiceStub(channel)
        booked = await booking.BookTrip(
            booking_pb.BookTripRequest(
                traveller_id="traveller-ada", flight_number=flight, hotel_id=hotel, nights=3
            ),
            timeout=10,
        )
    assert booked.booking.status == booking_pb.BOOKING_STATUS_REQUESTED
    return booked.booking.trip_id


async def final_booking(travel: Travel, trip_id: str, timeout: float = 60) -> booking_pb.Booking:
    final = (booking_pb.BOOKING_STATUS_CONFIRMED, booking_pb.BOOKING_STATUS_CANCELLED)
    found: list[booking_pb.Booking] = []
    async with grpc.aio.insecure_channel(travel.addresses["booking"]) as channel:
        booking: booking_grpc.BookingServiceAsyncStub = booking_grpc.BookingServiceStub(channel)

        async def done() -> bool:
            reply = await booking.GetBooking(booking_pb.GetBookingRequest(trip_id=trip_id))
            found[:] = [reply.booking]
            return reply.booking.status in final

        await wait_for(done, timeout=timeout, what=f"trip {trip_id} confirmed or cancelled")
    return found[0]


async def seat_of(travel: Travel, trip_id: str) -> flights_pb.GetSeatResponse:
    async with grpc.aio.insecure_channel(travel.addresses["flights"]) as channel:
        flights: flights_grpc.FlightsServiceAsyncStub = flights_grpc.FlightsServiceStub(channel)
        return await flights.GetSeat(flights_pb.GetSeatRequest(trip_id=trip_id))


async def room_of(travel: Travel, trip_id: str) -> hotels_pb.GetRoomResponse | None:
    async with grpc.aio.insecure_channel(travel.addresses["hotels"]) as channel:
        hotels: hotels_grpc.HotelsServiceAsyncStub = hotels_grpc.HotelsServiceStub(channel)
        try:
            return await hotels.GetRoom(hotels_pb.GetRoomRequest(trip_id=trip_id))
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.NOT_FOUND:
                return None
            raise


def saga_json(travel: Travel, trip_id: str) -> dict[str, Any]:
    """The saga as an operator reads it: ``choreo saga --json``, told the travel contracts."""
    result = subprocess.run(
        [CHOREO, "saga", trip_id, "--json", "--nats-url", travel.nats_url],
        env=env_with_travel(**CONTRACTS_ENV),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    view: dict[str, Any] = json.loads(result.stdout)
    return view


async def saga_events(travel: Travel, trip_id: str, expected: list[str]) -> list[str]:
    """The saga's event types, in order, once as many as ``expected`` are on the streams (the
    booking's state commits before its event leaves the outbox)."""
    found: list[str] = []

    async def landed() -> bool:
        view = await asyncio.to_thread(saga_json, travel, trip_id)
        found[:] = [step["event_type"] for step in view["steps"]]
        return len(found) >= len(expected)

    await wait_for(landed, timeout=30, what=f"the events of trip {trip_id}")
    return found


async def test_a_happy_trip_is_confirmed_and_a_full_hotel_releases_the_seat_and_cancels(
    travel: Travel,
) -> None:
    happy, hotel_full, flight_full = await asyncio.gather(
        book_trip(travel, "TR100", "grand-paris"),
        book_trip(travel, "TR200", SOLD_OUT),
        book_trip(travel, SOLD_OUT, "grand-paris"),
    )

    confirmed = await final_booking(travel, happy)
    assert confirmed.status == booking_pb.BOOKING_STATUS_CONFIRMED
    assert (confirmed.seat, confirmed.room) == ("1A", "101")  # the first seat, the first room
    assert (await seat_of(travel, happy)).status == flights_pb.SEAT_STATUS_HELD
    room = await room_of(travel, happy)
    assert room is not None and room.status == hotels_pb.ROOM_STATUS_BOOKED

    # The last step failed: the seat held for the trip was given back, then it was cancelled.
    cancelled = await final_booking(travel, hotel_full)
    assert cancelled.status == booking_pb.BOOKING_STATUS_CANCELLED
    assert cancelled.cancellation_reason == booking_events.CANCELLATION_REASON_HOTEL_UNAVAILABLE
    assert cancelled.seat == "1A" and not cancelled.room
    released = await seat_of(travel, hotel_full)
    assert (released.seat, released.status) == ("1A", flights_pb.SEAT_STATUS_RELEASED)
    refused = await room_of(travel, hotel_full)
    assert refused is not None and refused.status == hotels_pb.ROOM_STATUS_UNAVAILABLE

    # The first step failed: nothing was held, the hotel never heard of the trip.
    refused_early = await final_booking(travel, flight_full)
    assert refused_early.status == booking_pb.BOOKING_STATUS_CANCELLED
    assert (
        refused_early.cancellation_reason == booking_events.CANCELLATION_REASON_FLIGHT_UNAVAILABLE
    )
    assert (await seat_of(travel, flight_full)).status == flights_pb.SEAT_STATUS_UNAVAILABLE
    assert await room_of(travel, flight_full) is None

    # The streams hold each saga whole, in causal order, the compensations included.
    for trip_id, expected in ((happy, HAPPY), (hotel_full, HOTEL_FULL), (flight_full, FLIGHT_FULL)):
        assert await saga_events(travel, trip_id, expected) == expected
    view = saga_json(travel, hotel_full)
    assert {step["source"] for step in view["steps"]} == set(SERVICES)
    assert "RoomUnavailable: no_vacancy: hotel FULL has no room left" in view["failures"]

    # The released seat is free again: the next trip on that flight gets it.
    again = await final_booking(travel, await book_trip(travel, "TR200", "grand-paris"))
    assert (again.status, again.seat) == (booking_pb.BOOKING_STATUS_CONFIRMED, "1A")


async def test_a_bad_booking_is_refused_naming_each_field(travel: Travel) -> None:
    async with grpc.aio.insecure_channel(travel.addresses["booking"]) as channel:
        booking: booking_grpc.BookingServiceAsyncStub = booking_grpc.BookingServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await booking.BookTrip(
                booking_pb.BookTripRequest(
                    traveller_id="ada", flight_number="tr 1", hotel_id="grand", nights=0
                )
            )
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        fields = sorted(field for field, _ in grpc_errors.field_violations(refused.value))
        assert fields == ["flight_number", "nights"]
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await booking.GetBooking(booking_pb.GetBookingRequest(trip_id="no-such-trip"))
        assert unknown.value.code() is grpc.StatusCode.NOT_FOUND


# --- the console draws it -------------------------------------------------------------------


@contextlib.contextmanager
def running_console(travel: Travel) -> Iterator[str]:
    """``choreo console --port 0`` for the travel broker, told the travel contracts; yields its
    URL (the first line it prints)."""
    process = subprocess.Popen(
        [CHOREO, "console", "--port", "0", "--nats-url", travel.nats_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env_with_travel(PYTHONUNBUFFERED="1", **CONTRACTS_ENV),
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 30)
        line = process.stdout.readline() if ready else ""
        assert line.startswith("choreo console: http://"), (
            f"the console did not start: {line!r} {process.stderr.read() if process.stderr else ''}"
        )
        yield line.split()[2].rstrip("/")
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert process.returncode == 0, process.stderr.read() if process.stderr else ""


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    """Headless Chromium from Debian (apt-get install chromium chromium-driver; make test and
    CI install them): without it this test fails, it does not skip."""
    driver_path = shutil.which("chromedriver")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if driver_path is None or chromium is None:
        pytest.fail("this test needs Chromium and chromedriver: apt-get install -y chromium")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1300,1500")  # the path and the timeline
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def short(names: list[str]) -> list[str]:
    return [name.rsplit(".", 1)[-1] for name in names]


@pytest.mark.e2e
def test_the_console_draws_a_trip_whose_hotel_was_full_with_its_compensation(
    travel: Travel, browser: WebDriver, tmp_path: Path
) -> None:
    """The console knows the trip saga from its contracts alone: its list, its timeline and
    its path, the failure and the compensations marked. CHOREO_EXAMPLES_SCREENSHOT=<path>
    keeps the page's screenshot (docs/examples-console.png is one)."""
    trip_id = asyncio.run(book_trip(travel, "TR300", SOLD_OUT))
    assert asyncio.run(final_booking(travel, trip_id)).status == booking_pb.BOOKING_STATUS_CANCELLED
    asyncio.run(saga_events(travel, trip_id, HOTEL_FULL))

    with running_console(travel) as url:
        browser.get(url + "/sagas")
        row = browser.find_element(By.CSS_SELECTOR, f"tr.saga[data-order-id='{trip_id}']")
        assert "cancelled" in row.find_element(By.CSS_SELECTOR, ".outcome").text
        row.find_element(By.TAG_NAME, "a").click()

        WebDriverWait(
            browser, 30, poll_frequency=0.25, ignored_exceptions=[StaleElementReferenceException]
        ).until(lambda b: b.find_element(By.ID, "order-id").text == trip_id)
        assert browser.find_element(By.ID, "outcome").text == "cancelled"
        rows = browser.find_elements(By.CSS_SELECTOR, "#timeline tr.event")
        assert [row.get_attribute("data-event") for row in rows] == short(HOTEL_FULL)

        svg = browser.find_element(By.CSS_SELECTOR, "svg#saga-path")
        assert svg.is_displayed() and svg.size["height"] > 100
        kinds = {
            str(node.get_attribute("data-event")): str(node.get_attribute("class")).split()[-1]
            for node in svg.find_elements(By.CSS_SELECTOR, "g.node:not(.command)")
        }
        assert kinds == {
            "TripRequested": "step",
            "SeatHeld": "step",
            "TripFlightHeld": "step",
            "RoomUnavailable": "failure",
            "SeatReleased": "compensation",
            "TripCancelled": "compensation",
        }
        assert len(svg.find_elements(By.CSS_SELECTOR, "g.arrow")) == len(HOTEL_FULL)
        # The path starts at the RPC the contracts say emits TripRequested.
        (command,) = svg.find_elements(By.CSS_SELECTOR, "g.node.command")
        assert command.text == "BookTrip"
        page = browser.find_element(By.TAG_NAME, "body").text
        for name in short(HOTEL_FULL):
            assert name in page

        shot = tmp_path / "examples-console.png"
        assert browser.save_screenshot(str(shot))
        keep = os.environ.get("CHOREO_EXAMPLES_SCREENSHOT")
        if keep:
            Path(keep).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, keep)


# --- choreo audit checks it -----------------------------------------------------------------


def audit(travel: Travel, *flags: str) -> subprocess.CompletedProcess[str]:
    """``choreo audit`` against the travel broker, told the travel contracts. Only the checks
    of the contracts (--generic-only): the reference system's add-on, installed in this venv,
    would look for its own services."""
    return subprocess.run(
        [CHOREO, "audit", "--nats-url", travel.nats_url, "--generic-only", *flags],
        env=env_with_travel(**CONTRACTS_ENV),
        capture_output=True,
        text=True,
        check=False,
    )


async def test_choreo_audit_checks_the_trip_sagas_against_their_shape(travel: Travel) -> None:
    """Every trip saga reached one final event, and the failed ones their compensations
    (SeatReleased, then TripCancelled), once each; a trip that never got its TripCancelled is
    reported by its id."""
    confirmed, cancelled = await asyncio.gather(
        book_trip(travel, "TR400", "grand-paris"), book_trip(travel, "TR400", SOLD_OUT)
    )
    for trip_id, expected in ((confirmed, HAPPY), (cancelled, HOTEL_FULL)):
        await final_booking(travel, trip_id)
        assert await saga_events(travel, trip_id, expected) == expected

    clean = await asyncio.to_thread(audit, travel, "--settle-timeout", "10")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    sagas = re.search(r"^(\d+) trip sagas: (.*)$", clean.stdout, flags=re.MULTILINE)
    assert sagas is not None, clean.stdout
    ends = dict(end.rsplit(" ", 1) for end in sagas.group(2).split(", "))
    assert {"TripConfirmed", "TripCancelled"} <= set(ends), clean.stdout
    assert sum(int(count) for count in ends.values()) == int(sagas.group(1))
    assert "0 violation(s)" in clean.stdout

    # A trip the booking service never took (published by hand): flights holds its seat and,
    # told the hotel is full, releases it; booking knows no such trip and never cancels it.
    broken = f"broken-{uuid.uuid4().hex[:12]}"
    nc = await nats.connect(travel.nats_url)
    try:
        js = nc.jetstream()
        request = booking_events.TripRequested(
            trip_id=broken, traveller_id="ada", flight_number="TR500", hotel_id="FULL", nights=1
        )
        await publish_event(js, request, aggregate_id=broken, correlation_id=broken)
        assert await saga_events(travel, broken, HOTEL_FULL[:2]) == HOTEL_FULL[:2]  # held
        refusal = hotels_events.RoomUnavailable(trip_id=broken, hotel_id="FULL", reason="test")
        await publish_event(js, refusal, aggregate_id=broken, correlation_id=broken)
        released = [*HOTEL_FULL[:2], *HOTEL_FULL[3:5]]  # RoomUnavailable, SeatReleased
        assert await saga_events(travel, broken, released) == released
    finally:
        await nc.close()
    found = await asyncio.to_thread(audit, travel, "--settle-timeout", "10", "--grace", "0")
    assert found.returncode == 1, found.stdout + found.stderr
    violations = [line for line in found.stdout.splitlines() if broken in line]
    assert any(
        line.startswith("compensation:") and "TripCancelled" in line for line in violations
    ), found.stdout
    assert any(line.startswith("final:") for line in violations), found.stdout
    assert confirmed not in found.stdout and cancelled not in found.stdout
