"""OpenTelemetry: one tracer provider per process; the exporter is chosen by settings."""

from __future__ import annotations

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased


def create_tracer_provider(
    service_name: str, exporter: str, *, span_exporter: SpanExporter | None = None
) -> TracerProvider:
    """`exporter` is none, console or otlp; tests hand in their own `span_exporter` (in memory)."""
    # With no exporter this process starts no traces of its own (spans that would go nowhere cost
    # about a fifth of a small RPC), but it still joins, records and forwards a caller's sampled trace.
    sampler = (
        ParentBased(ALWAYS_OFF) if exporter == "none" and span_exporter is None else ParentBased(ALWAYS_ON)
    )
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}), sampler=sampler)
    if span_exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(span_exporter))
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
