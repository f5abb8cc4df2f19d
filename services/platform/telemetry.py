"""OpenTelemetry: one tracer provider per process; the exporter is chosen by settings."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import IO

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased


class JsonLinesSpanExporter(SpanExporter):
    """One JSON object per finished span, appended to a file (AGENTMESH_OTEL_EXPORTER=file): a trace a
    test or a person can read without a collector. Used with SimpleSpanProcessor, so a span is in the
    file as soon as it ends."""

    def __init__(self, path: str):
        self._path = path
        self._file: IO[str] | None = None
        self._lock = threading.Lock()

    @staticmethod
    def record(span: ReadableSpan) -> dict[str, object]:
        context = span.get_span_context()
        parent = span.parent
        return {
            "trace_id": format(context.trace_id, "032x") if context else "",
            "span_id": format(context.span_id, "016x") if context else "",
            "parent_span_id": format(parent.span_id, "016x") if parent else "",
            "name": span.name,
            "service.name": span.resource.attributes.get("service.name", ""),
            "kind": span.kind.name,
            "status": span.status.status_code.name,
        }

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(self.record(s)) + "\n" for s in spans)
        with self._lock:
            if self._file is None:
                # Opened on first use, in the process that exports (`serve --workers` forks first).
                self._file = open(self._path, "a", encoding="utf-8")
            self._file.write(lines)
            self._file.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def exports(exporter: str, span_exporter: SpanExporter | None = None) -> bool:
    """Whether this process's spans go anywhere. When not, it installs no OpenTelemetry
    interceptors (they cost about a sixth of a small authenticated RPC, bench/platform.py) and
    passes a caller's traceparent on to its peers unchanged, so a trace still joins up across it."""
    return exporter != "none" or span_exporter is not None


def create_tracer_provider(
    service_name: str, exporter: str, *, span_exporter: SpanExporter | None = None, file_path: str = ""
) -> TracerProvider:
    """`exporter` is none, console, otlp or file (JSON lines at `file_path`); tests hand in their own
    `span_exporter` (in memory)."""
    # With no exporter this process starts no traces of its own (spans that would go nowhere cost
    # about a fifth of a small RPC), but it still joins, records and forwards a caller's sampled trace.
    sampler = (
        ParentBased(ALWAYS_OFF) if exporter == "none" and span_exporter is None else ParentBased(ALWAYS_ON)
    )
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}), sampler=sampler)
    if span_exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    elif exporter == "file":
        provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(file_path)))
    elif exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError as exc:  # optional: pip install opentelemetry-exporter-otlp
            raise RuntimeError(
                "AGENTMESH_OTEL_EXPORTER=otlp needs the opentelemetry-exporter-otlp package"
            ) from exc
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider
