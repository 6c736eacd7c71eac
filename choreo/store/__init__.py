"""Storage port and its adapters (SQLite by default, Postgres for scale-out)."""
