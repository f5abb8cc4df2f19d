"""Logs: one JSON object per line with the current call's request id, tenant and trace id, and the
access-log middleware (one line per finished call)."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from opentelemetry import trace

from services.platform.call_context import CallInfo, current_call, metadata_value

log = logging.getLogger("agentmesh.rpc")


class AccessLog:
    """One JSON line per finished call: method, code, duration, tenant, request id."""

    @contextlib.asynccontextmanager
    async def around(self, call: CallInfo) -> AsyncIterator[None]:
        start = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            yield
        except BaseException:
            # grpc.aio gives None before any status, and the raw cython code before abort completes.
            raw: grpc.StatusCode | int | None = call.context.code()
            if raw is None:
                code = grpc.StatusCode.CANCELLED
            elif isinstance(raw, int):
                code = next((c for c in grpc.StatusCode if c.value[0] == raw), grpc.StatusCode.UNKNOWN)
            else:
                code = raw
            raise
        finally:
            log.info(
                "rpc",
                extra={
                    "fields": {
                        "method": call.method,
                        "code": code.name,
                        "duration_ms": round((time.perf_counter() - start) * 1000, 3),
                        "tenant": call.principal.tenant_id if call.principal else None,
                        "user": call.principal.user_id if call.principal else None,
                    }
                },
            )


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the current call's request id, tenant and trace id."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        call = current_call.get()
        if call is not None:
            entry["request_id"] = call.request_id
            if call.principal is not None:
                entry["tenant"] = call.principal.tenant_id
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = format(span.trace_id, "032x")
            entry["span_id"] = format(span.span_id, "016x")
        elif call is not None:
            # Not tracing here: the caller's trace id, from its traceparent ("00-<trace>-<span>-<flags>").
            parts = (metadata_value(call.metadata, "traceparent") or "").split("-")
            if len(parts) == 4 and len(parts[1]) == 32:
                entry["trace_id"] = parts[1]
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
