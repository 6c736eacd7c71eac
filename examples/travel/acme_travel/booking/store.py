"""The booking table in the service's own database (through choreo.store): a handler's change
commits with the runtime's inbox record and the outbox rows of the events it emits."""

from __future__ import annotations

from acme_travel.booking.domain import Reason, Status, Trip
from choreo.store.port import Transaction

SCHEMA: list[str] = [
    """CREATE TABLE IF NOT EXISTS trips (
        trip_id TEXT PRIMARY KEY,
        traveller_id TEXT NOT NULL,
        flight_number TEXT NOT NULL,
        hotel_id TEXT NOT NULL,
        nights INTEGER NOT NULL,
        status TEXT NOT NULL,
        seat TEXT NOT NULL,
        room TEXT NOT NULL,
        reason TEXT NOT NULL,
        detail TEXT NOT NULL
    )""",
]

_COLUMNS = (
    "trip_id, traveller_id, flight_number, hotel_id, nights, status, seat, room, reason, detail"
)


async def load_trip(tx: Transaction, trip_id: str) -> Trip | None:
    row = await tx.fetchone(f"SELECT {_COLUMNS} FROM trips WHERE trip_id = ?", (trip_id,))
    if row is None:
        return None
    return Trip(
        trip_id=str(row[0]),
        traveller_id=str(row[1]),
        flight_number=str(row[2]),
        hotel_id=str(row[3]),
        nights=int(row[4]),
        status=Status(row[5]),
        seat=str(row[6]),
        room=str(row[7]),
        reason=Reason(row[8]),
        detail=str(row[9]),
    )


async def save_trip(tx: Transaction, trip: Trip) -> None:
    await tx.execute(
        f"INSERT INTO trips ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (trip_id) DO UPDATE SET status = excluded.status, seat = excluded.seat,"
        " room = excluded.room, reason = excluded.reason, detail = excluded.detail",
        (
            trip.trip_id,
            trip.traveller_id,
            trip.flight_number,
            trip.hotel_id,
            trip.nights,
            trip.status.value,
            trip.seat,
            trip.room,
            trip.reason.value,
            trip.detail,
        ),
    )
