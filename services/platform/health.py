"""Standard gRPC health per service, driven by probes of the database and Redis.

Every registered service (and the server as a whole, "") is SERVING while all probes pass and
NOT_SERVING as soon as one fails, and comes back by itself when they pass again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from grpc_health.v1 import health, health_pb2

log = logging.getLogger("agentmesh.health")

# What a probe returns is ignored; raising means unreachable.
Probe = Callable[[], Awaitable[object]]


class HealthMonitor:
    def __init__(
        self,
        servicer: health.aio.HealthServicer,
        services: Iterable[str],
        probes: dict[str, Probe],
        *,
        interval: float = 1.0,
        timeout: float = 2.0,
    ):
        self.servicer = servicer
        self._services = ["", *services]
        self._probes = probes
        self._interval = interval
        self._timeout = timeout
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.serving: bool | None = None

    async def _check(self) -> list[str]:
        failed = []
        for name, probe in self._probes.items():
            try:
                await asyncio.wait_for(probe(), self._timeout)
            except Exception as exc:
                failed.append(f"{name}: {type(exc).__name__}: {exc}")
        return failed

    async def _set(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in self._services:
            await self.servicer.set(service, status)

    async def check_once(self) -> bool:
        failed = await self._check()
        serving = not failed and not self._stopping
        if serving != self.serving:
            if failed:
                log.warning("dependencies unhealthy", extra={"fields": {"failed": failed}})
            else:
                log.info("dependencies healthy")
            await self._set(serving)
            self.serving = serving
        return serving

    async def _loop(self) -> None:
        while not self._stopping:
            await self.check_once()
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="health-monitor")

    async def shutdown(self) -> None:
        """NOT_SERVING for good: load balancers stop sending new calls before the server drains."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self.servicer.enter_graceful_shutdown()
        self.serving = False
