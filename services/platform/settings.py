"""Settings, read once from an environment mapping (tests pass a plain dict).

Every variable is listed in the README's configuration table; keep the two in step.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Mapping
from typing import Any


class SettingsError(ValueError):
    """A variable is missing or malformed; the message names it."""


def _number(env: Mapping[str, str], name: str, default: Any, kind: type, positive: bool) -> Any:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise SettingsError(f"{name} must be {what}, got {raw!r}") from None
    if positive and value <= 0:
        raise SettingsError(f"{name} must be positive, got {raw!r}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, *, positive: bool = False) -> int:
    return int(_number(env, name, default, int, positive))


def _float(env: Mapping[str, str], name: str, default: float, *, positive: bool = False) -> float:
    return float(_number(env, name, default, float, positive))


def _signup(env: Mapping[str, str]) -> bool | None:
    raw = env.get("AGENTMESH_SIGNUP", "")
    if raw not in ("", "open", "closed"):
        raise SettingsError(f"AGENTMESH_SIGNUP must be open or closed, got {raw!r}")
    return None if raw == "" else raw == "open"


@dataclasses.dataclass(frozen=True, kw_only=True)
class TlsSettings:
    cert_file: str = ""
    key_file: str = ""
    # With a CA, servers require client certificates and channels present ours: mutual TLS.
    ca_file: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file and self.key_file)

    @property
    def mutual(self) -> bool:
        return self.enabled and bool(self.ca_file)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AuthSettings:
    issuer: str = "agentmesh"
    audience: str = "agentmesh"
    access_token_ttl_seconds: int = 900
    refresh_token_ttl_seconds: int = 30 * 24 * 3600
    # A session (a refresh token family) ends this long after its login, however often it is
    # refreshed: a stolen refresh token kept alive by rotation dies with it.
    session_max_seconds: int = 90 * 24 * 3600
    # PEM Ed25519 private key identity signs with; earlier keys stay published in the JWKS.
    signing_key_file: str = ""
    previous_signing_key_files: tuple[str, ...] = ()
    # Shared secret that exchanges for a service token (IssueServiceToken).
    service_secret: str = ""
    # HMAC key for page tokens.
    page_token_secret: str = ""
    # How long a verifier trusts a "not revoked" answer before asking Redis again.
    revocation_cache_seconds: float = 1.0
    # AGENTMESH_SIGNUP: whether SignUp creates tenants; None: open in the embedded mode, else closed
    # (an operator creates tenants with `agentmesh admin tenants create`).
    signup_open: bool | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class PeerSettings:
    identity: str = ""
    agents: str = ""
    conversation: str = ""
    orchestration: str = ""
    # Cap on any call to a peer; the caller's remaining deadline wins when shorter.
    deadline_seconds: float = 10.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class GatewaySettings:
    # Origins allowed by CORS; empty: none (the embedded mode adds its own origin).
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 1024 * 1024
    # Deadline of a unary call when the request has no Grpc-Timeout header.
    default_timeout_seconds: float = 30.0
    ws_max_frame_bytes: int = 64 * 1024
    ws_messages_per_minute: int = 60
    ws_connections_per_user: int = 10
    ws_max_connections: int = 10_000
    ws_heartbeat_seconds: float = 20.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProviderSettings:
    """Model providers (orchestration)."""

    # Delay between echo tokens; None: 30 ms in the embedded mode (a person sees it stream), else 0.
    echo_delay_ms: int | None = None
    # An OpenAI-compatible API root, for example https://api.openai.com/v1 or http://localhost:11434/v1.
    openai_base_url: str = "https://api.openai.com/v1"
    openai_api_key: str = ""
    openai_connect_timeout_seconds: float = 5.0
    # The longest silence allowed between two chunks of a streamed answer.
    openai_read_timeout_seconds: float = 60.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunSettings:
    """Runs (orchestration)."""

    # Every run holds a Redis lease its instance renews every fifth of this; when it lapses (the
    # instance died), any instance fails the run. Longer: fewer renewals, a dead run ends later.
    lease_seconds: float = 10.0
    # How often every instance looks for runs whose lease lapsed (also once at start-up).
    sweep_interval_seconds: float = 5.0
    # How long a finished run's events stay readable by JoinRun.
    event_retention_seconds: int = 3600


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    embedded: bool = False
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    data_dir: str = ".agentmesh"
    database_url: str = ""
    redis_url: str = ""
    log_level: str = "INFO"
    otel_exporter: str = "none"
    # With otel_exporter "file": where finished spans are appended, one JSON object per line.
    otel_file: str = ""
    metrics_port: int = 0
    shutdown_grace_seconds: float = 10.0
    health_interval_seconds: float = 1.0
    tls: TlsSettings = dataclasses.field(default_factory=TlsSettings)
    auth: AuthSettings = dataclasses.field(default_factory=AuthSettings)
    peers: PeerSettings = dataclasses.field(default_factory=PeerSettings)
    gateway: GatewaySettings = dataclasses.field(default_factory=GatewaySettings)
    providers: ProviderSettings = dataclasses.field(default_factory=ProviderSettings)
    runs: RunSettings = dataclasses.field(default_factory=RunSettings)

    @property
    def grpc_address(self) -> str:
        return f"{self.grpc_host}:{self.grpc_port}"

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        path = pathlib.Path(self.data_dir).resolve() / "agentmesh.db"
        return f"sqlite+aiosqlite:///{path}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Reads AGENTMESH_* (plus DATABASE_URL and REDIS_URL); keyword overrides win (CLI flags)."""
        env = os.environ if env is None else env
        exporter = env.get("AGENTMESH_OTEL_EXPORTER", "none")
        if exporter not in ("none", "console", "otlp", "file", "memory"):
            raise SettingsError(
                f"AGENTMESH_OTEL_EXPORTER must be none, console, otlp or file, got {exporter!r}"
            )
        otel_file = env.get("AGENTMESH_OTEL_FILE", "")
        if exporter == "file" and not otel_file:
            raise SettingsError("AGENTMESH_OTEL_EXPORTER=file needs AGENTMESH_OTEL_FILE (a file path)")
        previous = tuple(p for p in env.get("AGENTMESH_PREVIOUS_SIGNING_KEY_FILES", "").split(",") if p)
        values: dict[str, object] = dict(
            grpc_host=env.get("AGENTMESH_GRPC_HOST", "127.0.0.1"),
            grpc_port=_int(env, "AGENTMESH_GRPC_PORT", 50051),
            http_host=env.get("AGENTMESH_HTTP_HOST", "127.0.0.1"),
            http_port=_int(env, "AGENTMESH_HTTP_PORT", 8080),
            data_dir=env.get("AGENTMESH_DATA_DIR", ".agentmesh"),
            database_url=env.get("DATABASE_URL", ""),
            redis_url=env.get("REDIS_URL", ""),
            log_level=env.get("AGENTMESH_LOG_LEVEL", "INFO").upper(),
            otel_exporter=exporter,
            otel_file=otel_file,
            metrics_port=_int(env, "AGENTMESH_METRICS_PORT", 0),
            shutdown_grace_seconds=_float(env, "AGENTMESH_SHUTDOWN_GRACE_SECONDS", 10.0),
            health_interval_seconds=_float(env, "AGENTMESH_HEALTH_INTERVAL_SECONDS", 1.0),
            tls=TlsSettings(
                cert_file=env.get("AGENTMESH_TLS_CERT_FILE", ""),
                key_file=env.get("AGENTMESH_TLS_KEY_FILE", ""),
                ca_file=env.get("AGENTMESH_TLS_CA_FILE", ""),
            ),
            auth=AuthSettings(
                issuer=env.get("AGENTMESH_JWT_ISSUER", "agentmesh"),
                audience=env.get("AGENTMESH_JWT_AUDIENCE", "agentmesh"),
                access_token_ttl_seconds=_int(env, "AGENTMESH_ACCESS_TOKEN_TTL_SECONDS", 900),
                refresh_token_ttl_seconds=_int(env, "AGENTMESH_REFRESH_TOKEN_TTL_SECONDS", 30 * 24 * 3600),
                session_max_seconds=_int(env, "AGENTMESH_SESSION_MAX_SECONDS", 90 * 24 * 3600, positive=True),
                signing_key_file=env.get("AGENTMESH_SIGNING_KEY_FILE", ""),
                previous_signing_key_files=previous,
                service_secret=env.get("AGENTMESH_SERVICE_SECRET", ""),
                page_token_secret=env.get("AGENTMESH_PAGE_TOKEN_SECRET", ""),
                revocation_cache_seconds=_float(env, "AGENTMESH_REVOCATION_CACHE_SECONDS", 1.0),
                signup_open=_signup(env),
            ),
            peers=PeerSettings(
                identity=env.get("AGENTMESH_IDENTITY_ADDR", ""),
                agents=env.get("AGENTMESH_AGENTS_ADDR", ""),
                conversation=env.get("AGENTMESH_CONVERSATION_ADDR", ""),
                orchestration=env.get("AGENTMESH_ORCHESTRATION_ADDR", ""),
                deadline_seconds=_float(env, "AGENTMESH_PEER_DEADLINE_SECONDS", 10.0),
            ),
            gateway=GatewaySettings(
                cors_origins=tuple(o for o in env.get("AGENTMESH_CORS_ORIGINS", "").split(",") if o),
                max_body_bytes=_int(env, "AGENTMESH_GATEWAY_MAX_BODY_BYTES", 1024 * 1024),
                default_timeout_seconds=_float(env, "AGENTMESH_GATEWAY_DEFAULT_TIMEOUT_SECONDS", 30.0),
                ws_max_frame_bytes=_int(env, "AGENTMESH_WS_MAX_FRAME_BYTES", 64 * 1024),
                ws_messages_per_minute=_int(env, "AGENTMESH_WS_MESSAGES_PER_MINUTE", 60),
                ws_connections_per_user=_int(env, "AGENTMESH_WS_CONNECTIONS_PER_USER", 10),
                ws_max_connections=_int(env, "AGENTMESH_WS_MAX_CONNECTIONS", 10_000),
                ws_heartbeat_seconds=_float(env, "AGENTMESH_WS_HEARTBEAT_SECONDS", 20.0),
            ),
            providers=ProviderSettings(
                echo_delay_ms=_int(env, "AGENTMESH_ECHO_DELAY_MS", -1)
                if env.get("AGENTMESH_ECHO_DELAY_MS")
                else None,
                openai_base_url=env.get("AGENTMESH_OPENAI_BASE_URL", "https://api.openai.com/v1"),
                openai_api_key=env.get("AGENTMESH_OPENAI_API_KEY", ""),
                openai_connect_timeout_seconds=_float(env, "AGENTMESH_OPENAI_CONNECT_TIMEOUT_SECONDS", 5.0),
                openai_read_timeout_seconds=_float(env, "AGENTMESH_OPENAI_READ_TIMEOUT_SECONDS", 60.0),
            ),
            runs=RunSettings(
                lease_seconds=_float(env, "AGENTMESH_RUN_LEASE_SECONDS", 10.0, positive=True),
                sweep_interval_seconds=_float(env, "AGENTMESH_RUN_SWEEP_SECONDS", 5.0, positive=True),
                event_retention_seconds=_int(
                    env, "AGENTMESH_RUN_EVENT_RETENTION_SECONDS", 3600, positive=True
                ),
            ),
        )
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    def embedded_defaults(self) -> Settings:
        """The embedded mode: peers are this process, secrets live in the data directory."""
        own = self.grpc_address
        peers = dataclasses.replace(
            self.peers,
            identity=self.peers.identity or own,
            agents=self.peers.agents or own,
            conversation=self.peers.conversation or own,
            orchestration=self.peers.orchestration or own,
        )
        origins = self.gateway.cors_origins or (
            f"http://{self.http_host}:{self.http_port}",
            f"http://localhost:{self.http_port}",
        )
        gateway = dataclasses.replace(self.gateway, cors_origins=origins)
        return dataclasses.replace(self, embedded=True, peers=peers, gateway=gateway)
