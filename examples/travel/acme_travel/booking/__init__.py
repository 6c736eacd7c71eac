"""The booking service: takes trip bookings over gRPC and owns the trip's lifecycle."""
