"""The HTTP front door: JSON, SSE, NDJSON and WebSocket traffic transcoded to gRPC, derived from the
descriptors' google.api.http rules. `create_app(settings)` builds the Starlette application."""

from gateway.app import create_app

__all__ = ["create_app"]
