"""Tools that exercise the reference system: the benchmark and its baselines, chaos runs."""
