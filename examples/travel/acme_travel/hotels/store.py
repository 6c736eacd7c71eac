"""The rooms table in the hotels service's own database (through choreo.store)."""

from __future__ import annotations

from acme_travel.hotels.domain import Room, Status
from choreo.store.port import Transaction

SCHEMA: list[str] = [
    """CREATE TABLE IF NOT EXISTS rooms (
        trip_id TEXT PRIMARY KEY,
        hotel_id TEXT NOT NULL,
        room TEXT NOT NULL,
        nights INTEGER NOT NULL,
        status TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS rooms_by_hotel ON rooms (hotel_id, status)",
]


async def room_of(tx: Transaction, trip_id: str) -> Room | None:
    row = await tx.fetchone(
        "SELECT trip_id, hotel_id, room, nights, status FROM rooms WHERE trip_id = ?", (trip_id,)
    )
    if row is None:
        return None
    return Room(str(row[0]), str(row[1]), str(row[2]), int(row[3]), Status(row[4]))


async def booked_rooms(tx: Transaction, hotel_id: str) -> set[str]:
    rows = await tx.fetchall(
        "SELECT room FROM rooms WHERE hotel_id = ? AND status = ?",
        (hotel_id, Status.BOOKED.value),
    )
    return {str(row[0]) for row in rows}


async def save_room(tx: Transaction, room: Room) -> None:
    await tx.execute(
        "INSERT INTO rooms (trip_id, hotel_id, room, nights, status) VALUES (?, ?, ?, ?, ?)",
        (room.trip_id, room.hotel_id, room.room, room.nights, room.status.value),
    )
