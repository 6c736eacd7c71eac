"""The loyalty service: another team's service on the choreo runtime (see ../README.md)."""
