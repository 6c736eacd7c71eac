"""The travel example: a trip booking saga of three services, booking, flights and hotels, each
in its own proto package (see ../README.md)."""

from __future__ import annotations

#: The generated code of proto/acme/{booking,flights,hotels}/v1. Each service reads all three:
#: it reacts to the others' events and emits its own.
CONTRACTS = ("acme.booking.v1", "acme.flights.v1", "acme.hotels.v1")

#: The flight number or hotel id that never has a seat or a room left, so a test (or a curious
#: reader) can drive the saga's failure paths by input alone.
SOLD_OUT = "FULL"
