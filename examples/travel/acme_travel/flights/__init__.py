"""The flights service: holds a seat for each trip, and gives it back when the trip fails later."""
