"""The seats table in the flights service's own database (through choreo.store)."""

from __future__ import annotations

from acme_travel.flights.domain import Seat, Status
from choreo.store.port import Transaction

SCHEMA: list[str] = [
    """CREATE TABLE IF NOT EXISTS seats (
        trip_id TEXT PRIMARY KEY,
        flight_number TEXT NOT NULL,
        seat TEXT NOT NULL,
        status TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS seats_by_flight ON seats (flight_number, status)",
]


async def seat_of(tx: Transaction, trip_id: str) -> Seat | None:
    row = await tx.fetchone(
        "SELECT trip_id, flight_number, seat, status FROM seats WHERE trip_id = ?", (trip_id,)
    )
    if row is None:
        return None
    return Seat(str(row[0]), str(row[1]), str(row[2]), Status(row[3]))


async def held_seats(tx: Transaction, flight_number: str) -> set[str]:
    rows = await tx.fetchall(
        "SELECT seat FROM seats WHERE flight_number = ? AND status = ?",
        (flight_number, Status.HELD.value),
    )
    return {str(row[0]) for row in rows}


async def save_seat(tx: Transaction, seat: Seat) -> None:
    await tx.execute(
        "INSERT INTO seats (trip_id, flight_number, seat, status) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (trip_id) DO UPDATE SET status = excluded.status",
        (seat.trip_id, seat.flight_number, seat.seat, seat.status.value),
    )
