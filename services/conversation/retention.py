"""Retention: closed conversations older than their tenant's `closed_retention_days` are erased
(messages and conversation from PostgreSQL, the hot window from Redis). 0 days keeps them forever.

"Older" is measured from the time the conversation was closed. The job runs in every conversation
process every RETENTION_INTERVAL_SECONDS (several replicas running it at once is harmless: erasing is
idempotent) and on demand with `agentmesh retention`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from services.conversation.service import HotWindow

log = logging.getLogger("agentmesh.conversation.retention")

RETENTION_INTERVAL_SECONDS = 3600.0
DAY_US = 86_400 * 1_000_000


class RetentionStore(Protocol):
    async def retention_policies(self, tenant_id: str | None = None) -> list[tuple[str, int]]: ...
    async def expired_conversations(self, tenant_id: str, *, closed_before: int, limit: int) -> list[str]: ...
    async def delete_conversations(self, conversation_ids: Sequence[str]) -> int: ...


class RetentionJob:
    def __init__(
        self,
        *,
        store: RetentionStore,
        hot: HotWindow,
        clock: Callable[[], float] = time.time,
        batch: int = 500,
    ):
        self.store = store
        self.hot = hot
        self.clock = clock
        self.batch = batch

    async def run_once(self, tenant_id: str | None = None) -> int:
        """Erases what the policies say is due; returns how many conversations were erased."""
        now = int(self.clock() * 1_000_000)
        erased = 0
        for tenant, days in await self.store.retention_policies(tenant_id):
            cutoff = now - days * DAY_US
            while True:
                ids = await self.store.expired_conversations(tenant, closed_before=cutoff, limit=self.batch)
                if not ids:
                    break
                erased += await self.store.delete_conversations(ids)
                await self.hot.drop(*ids)
        if erased:
            log.info("retention erased conversations", extra={"fields": {"conversations": erased}})
        return erased

    async def run_forever(self, interval: float = RETENTION_INTERVAL_SECONDS) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A database outage must not end the job; the next round tries again.
                log.exception("retention run failed")
            await asyncio.sleep(interval)
