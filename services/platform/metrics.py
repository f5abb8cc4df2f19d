"""Prometheus metrics: calls, errors and latency per method and tenant, open streams, and the tokens
and cost of model answers (by tier and model: no tenant ids as labels, their count is unbounded)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from services.platform.call_context import CallInfo


class UsageMeter:
    """agentmesh_tokens_total{tier, model, kind} and agentmesh_cost_micros_total{tier, model},
    counted by conversation where an append with usage is accepted."""

    def __init__(self) -> None:
        # In no registry of their own: every server's Metrics registers them in its registry.
        self.tokens = Counter(
            "agentmesh_tokens", "Model tokens of stored answers", ("tier", "model", "kind"), registry=None
        )
        self.cost = Counter(
            "agentmesh_cost_micros",
            "Cost of stored answers in millionths of the price currency unit",
            ("tier", "model"),
            registry=None,
        )

    def record(
        self, *, tier: str, model: str, prompt_tokens: int, completion_tokens: int, cost_micros: int
    ) -> None:
        self.tokens.labels(tier, model, "prompt").inc(prompt_tokens)
        self.tokens.labels(tier, model, "completion").inc(completion_tokens)
        self.cost.labels(tier, model).inc(cost_micros)


# One per process, like the services it counts for; each server's registry exposes it.
USAGE = UsageMeter()


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
        self.registry.register(USAGE.tokens)
        self.registry.register(USAGE.cost)

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
