"""The inventory service: domain decisions, store, and (written by others) handlers and API."""
