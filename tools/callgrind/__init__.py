"""A per-event CPU budget per layer, counted in instructions under valgrind's callgrind.

``python -m tools.callgrind.budget`` runs a service's hot path in-process, on a nats-py client
whose socket is a buffer in memory (:mod:`tools.callgrind.wire`), and reports instructions per
event for each layer: repeatable where wall-clock time on a shared machine is not.
"""
