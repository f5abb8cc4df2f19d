"""Prometheus metrics: calls, errors and latency per method and tenant, and open streams."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from services.platform.call_context import CallInfo


class Metrics:
    """A middleware that counts every call; `serve(port)` exposes the registry over HTTP."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        labels = ("method", "tenant")
        self.calls = Counter("agentmesh_rpc_calls", "RPCs handled", (*labels, "code"), registry=self.registry)
        self.latency = Histogram(
            "agentmesh_rpc_duration_seconds",
            "RPC duration (streams: until closed)",
            labels,
            registry=self.registry,
        )
        self.active = Gauge(
            "agentmesh_rpc_active", "RPCs in progress (open streams)", ("method",), registry=self.registry
        )

    @contextlib.asynccontextmanager
    async def around(self, call: CallInfo) -> AsyncIterator[None]:
        start = time.perf_counter()
        code = "OK"
        self.active.labels(call.method).inc()
        try:
            yield
        except BaseException:
            status = call.context.code()
            code = status.name if isinstance(status, grpc.StatusCode) else "CANCELLED"
            raise
        finally:
            self.active.labels(call.method).dec()
            tenant = call.principal.tenant_id if call.principal else ""
            self.calls.labels(call.method, tenant, code).inc()
            self.latency.labels(call.method, tenant).observe(time.perf_counter() - start)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)
