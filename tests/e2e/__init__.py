"""End-to-end tests: the services as processes, a real broker, real gRPC."""

from __future__ import annotations

from services.audit import AuditReport, audit, read_ledgers, wait_for_quiescence
from services.catalog import load_catalog
from services.settings import SagaSettings
from services.system import System


async def audit_quiet_system(system: System, timeout_s: float = 90.0) -> AuditReport:
    """Wait until nothing is in flight (every consumer acked, every outbox empty), then check
    invariants 1-6 as an operator would (with the operator's login on a secured broker)."""
    saga = SagaSettings()
    nc = await system.connect()
    try:
        js = nc.jetstream(timeout=10)
        assert await wait_for_quiescence(
            js, system.config.data_dir, databases=system.database_urls, timeout_s=timeout_s
        ), "the system did not become quiet"
        return await audit(
            js=js,
            addresses=system.addresses,
            catalog=load_catalog(saga.catalog_path),
            ledgers=await read_ledgers(system.config.data_dir, saga),
        )
    finally:
        await nc.close()
