"""Settings, read once from an environment mapping (tests pass a plain dict).

Each setting is declared once, as a field of a frozen dataclass (starlette's
`DEBUG = config("DEBUG", cast=bool, default=False)`): `setting(variable, default, parse=..., doc=...)`
names the variable, its parser, its default (and how the README shows it when the default depends on
the mode) and what it means. `Settings.from_env` and `SETTINGS` (the README's configuration table,
which tests/test_docs.py compares with `markdown_table()`) both come from those declarations.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

T = TypeVar("T")
if TYPE_CHECKING:
    from _typeshed import DataclassInstance

D = TypeVar("D", bound="DataclassInstance")


class SettingsError(ValueError):
    """A variable is missing or malformed; the message names it."""


# A parser gets the variable's name (for the error) and its non-empty raw value.
Parser = Callable[[str, str], Any]


def text(name: str, raw: str) -> str:
    return raw


def upper(name: str, raw: str) -> str:
    return raw.upper()


def _number(kind: type[int] | type[float], *, positive: bool) -> Parser:
    def parse(name: str, raw: str) -> int | float:
        try:
            value = kind(raw)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise SettingsError(f"{name} must be {what}, got {raw!r}") from None
        if positive and value <= 0:
            raise SettingsError(f"{name} must be positive, got {raw!r}")
        return value

    return parse


integer = _number(int, positive=False)
positive_integer = _number(int, positive=True)
number = _number(float, positive=False)
positive_number = _number(float, positive=True)


def csv(name: str, raw: str) -> tuple[str, ...]:
    return tuple(part for part in raw.split(",") if part)


def choice(*allowed: str, message: str = "") -> Parser:
    def parse(name: str, raw: str) -> str:
        if raw not in allowed:
            raise SettingsError(f"{name} must be {message or ' or '.join(allowed)}, got {raw!r}")
        return raw

    return parse


def open_or_closed(name: str, raw: str) -> bool:
    return bool(choice("open", "closed")(name, raw) == "open")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One variable: what reads it (`parse`), its default as the README shows it, and its meaning."""

    variable: str
    parse: Parser
    shown: str
    doc: str


def _shown(default: object) -> str:
    if default in ("", (), None):
        return "none"
    if isinstance(default, float) and default.is_integer():
        default = int(default)
    return f"`{default}`"


def setting(variable: str, default: T, *, doc: str, parse: Parser = text, shown: str = "") -> T:
    """A dataclass field read from `variable` (unset or empty: `default`); `shown` is the README's
    default when the plain value would mislead (it depends on the mode, or 0 means off)."""
    spec = Setting(variable, parse, shown or _shown(default), doc)
    return dataclasses.field(default=default, metadata={"setting": spec})


def _read(cls: type[D], env: Mapping[str, str]) -> D:
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        spec: Setting | None = field.metadata.get("setting")
        if spec is not None:
            raw = env.get(spec.variable, "")
            if raw != "":
                values[field.name] = spec.parse(spec.variable, raw)
        elif _is_group(field):
            values[field.name] = _read(cast(type[Any], field.default_factory), env)
    return cls(**values)


def _is_group(field: dataclasses.Field[Any]) -> bool:
    return field.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(
        field.default_factory
    )


def _declared(cls: type[Any]) -> Iterator[Setting]:
    for field in dataclasses.fields(cls):
        if "setting" in field.metadata:
            yield field.metadata["setting"]
        elif _is_group(field):
            yield from _declared(cast(type[Any], field.default_factory))


@dataclasses.dataclass(frozen=True, kw_only=True)
class TlsSettings:
    cert_file: str = setting(
        "AGENTMESH_TLS_CERT_FILE",
        "",
        doc="TLS for the server and for channels to peers: the certificate (PEM)",
    )
    key_file: str = setting(
        "AGENTMESH_TLS_KEY_FILE",
        "",
        doc="TLS for the server and for channels to peers: its private key (PEM)",
    )
    ca_file: str = setting(
        "AGENTMESH_TLS_CA_FILE",
        "",
        doc="with the two above: mutual TLS (clients must present a certificate from this CA)",
    )

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file and self.key_file)

    @property
    def mutual(self) -> bool:
        return self.enabled and bool(self.ca_file)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AuthSettings:
    issuer: str = setting("AGENTMESH_JWT_ISSUER", "agentmesh", doc="`iss` of access tokens")
    audience: str = setting("AGENTMESH_JWT_AUDIENCE", "agentmesh", doc="`aud` of access tokens")
    access_token_ttl_seconds: int = setting(
        "AGENTMESH_ACCESS_TOKEN_TTL_SECONDS", 900, parse=integer, doc="access token lifetime"
    )
    refresh_token_ttl_seconds: int = setting(
        "AGENTMESH_REFRESH_TOKEN_TTL_SECONDS",
        30 * 24 * 3600,
        parse=integer,
        doc="refresh token lifetime (each rotation issues a new one)",
    )
    # A stolen refresh token kept alive by rotation dies with its session.
    session_max_seconds: int = setting(
        "AGENTMESH_SESSION_MAX_SECONDS",
        90 * 24 * 3600,
        parse=positive_integer,
        doc="a session ends this long after its login however often it is refreshed; then log in again",
    )
    signing_key_file: str = setting(
        "AGENTMESH_SIGNING_KEY_FILE",
        "",
        shown="generated in the data dir (embedded only)",
        doc="identity's Ed25519 private key (PEM)",
    )
    previous_signing_key_files: tuple[str, ...] = setting(
        "AGENTMESH_PREVIOUS_SIGNING_KEY_FILES",
        (),
        parse=csv,
        doc="comma-separated older keys, still published in the JWKS during a rollover",
    )
    service_secret: str = setting(
        "AGENTMESH_SERVICE_SECRET",
        "",
        shown="generated (embedded only)",
        doc="exchanged for service tokens (IssueServiceToken)",
    )
    page_token_secret: str = setting(
        "AGENTMESH_PAGE_TOKEN_SECRET", "", shown="generated (embedded only)", doc="HMAC key of page tokens"
    )
    revocation_cache_seconds: float = setting(
        "AGENTMESH_REVOCATION_CACHE_SECONDS",
        1.0,
        parse=number,
        doc='how long a verifier trusts a "token not revoked" answer',
    )
    # None: open in the embedded mode, else closed.
    signup_open: bool | None = setting(
        "AGENTMESH_SIGNUP",
        None,
        parse=open_or_closed,
        shown="`open` embedded, `closed` otherwise",
        doc="`closed`: SignUp is PERMISSION_DENIED; the operator creates tenants with `agentmesh admin`",
    )


_PEER = "this process (embedded)"


@dataclasses.dataclass(frozen=True, kw_only=True)
class PeerSettings:
    identity: str = setting(
        "AGENTMESH_IDENTITY_ADDR", "", shown=_PEER, doc="identity's address (`host:port`)"
    )
    agents: str = setting("AGENTMESH_AGENTS_ADDR", "", shown=_PEER, doc="agents' address (`host:port`)")
    conversation: str = setting(
        "AGENTMESH_CONVERSATION_ADDR", "", shown=_PEER, doc="conversation's address (`host:port`)"
    )
    orchestration: str = setting(
        "AGENTMESH_ORCHESTRATION_ADDR", "", shown=_PEER, doc="orchestration's address (`host:port`)"
    )
    deadline_seconds: float = setting(
        "AGENTMESH_PEER_DEADLINE_SECONDS",
        10.0,
        parse=number,
        doc="cap on any call to a peer (the caller's remaining deadline wins when shorter)",
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class GatewaySettings:
    cors_origins: tuple[str, ...] = setting(
        "AGENTMESH_CORS_ORIGINS",
        (),
        parse=csv,
        shown="none (the embedded mode allows its own page)",
        doc="comma-separated origins the gateway allows",
    )
    max_body_bytes: int = setting(
        "AGENTMESH_GATEWAY_MAX_BODY_BYTES", 1024 * 1024, parse=integer, doc="larger request bodies get 413"
    )
    default_timeout_seconds: float = setting(
        "AGENTMESH_GATEWAY_DEFAULT_TIMEOUT_SECONDS",
        30.0,
        parse=number,
        doc="deadline of a unary call when the request sends no `Grpc-Timeout`",
    )
    ws_max_frame_bytes: int = setting(
        "AGENTMESH_WS_MAX_FRAME_BYTES",
        64 * 1024,
        parse=integer,
        doc="larger WebSocket frames close the socket (1009)",
    )
    ws_messages_per_minute: int = setting(
        "AGENTMESH_WS_MESSAGES_PER_MINUTE",
        60,
        parse=integer,
        doc="per connection; more get a `RATE_LIMIT` error event",
    )
    ws_connections_per_user: int = setting(
        "AGENTMESH_WS_CONNECTIONS_PER_USER",
        10,
        parse=integer,
        doc="across every gateway worker and replica (counted in Redis); more close with 4429",
    )
    # Longer: fewer renewals, but the sockets of a killed gateway hold their user's slots longer.
    ws_lease_seconds: float = setting(
        "AGENTMESH_WS_LEASE_SECONDS",
        30.0,
        parse=positive_number,
        doc="an open WebSocket's slot in its user's Redis count, renewed every third of this; a killed gateway's slots free themselves after it",
    )
    ws_max_connections: int = setting(
        "AGENTMESH_WS_MAX_CONNECTIONS", 10_000, parse=integer, doc="in total per gateway process"
    )
    ws_heartbeat_seconds: float = setting(
        "AGENTMESH_WS_HEARTBEAT_SECONDS", 20.0, parse=number, doc="WebSocket ping interval"
    )
    unsent_bytes: int = setting(
        "AGENTMESH_GATEWAY_UNSENT_BYTES",
        64 * 1024,
        parse=integer,
        shown="`65536` (0: the system's)",
        doc="per client connection, the most the kernel holds not yet sent (TCP_NOTSENT_LOWAT, Linux); with uvicorn's 64 KiB write buffer, what a client that stops reading pins besides its TCP window, so its stream backs up to orchestration, which cuts it",
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProviderSettings:
    """Model providers (orchestration)."""

    # None: 30 ms in the embedded mode (a person sees it stream), else 0.
    echo_delay_ms: int | None = setting(
        "AGENTMESH_ECHO_DELAY_MS",
        None,
        parse=integer,
        shown="`30` embedded, `0` otherwise",
        doc="delay between the echo provider's tokens, so a person sees the answer stream",
    )
    openai_base_url: str = setting(
        "AGENTMESH_OPENAI_BASE_URL",
        "https://api.openai.com/v1",
        doc="any OpenAI-compatible API root (vLLM, Ollama, llama.cpp server) for `openai:*` models",
    )
    openai_api_key: str = setting("AGENTMESH_OPENAI_API_KEY", "", doc="sent as the bearer key to that API")
    openai_connect_timeout_seconds: float = setting(
        "AGENTMESH_OPENAI_CONNECT_TIMEOUT_SECONDS",
        5.0,
        parse=number,
        doc="connect timeout of the provider call",
    )
    openai_read_timeout_seconds: float = setting(
        "AGENTMESH_OPENAI_READ_TIMEOUT_SECONDS",
        60.0,
        parse=number,
        doc="the longest silence allowed between two chunks of an answer",
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunSettings:
    """Runs (orchestration)."""

    # Longer: fewer renewals, but a dead instance's runs end later.
    lease_seconds: float = setting(
        "AGENTMESH_RUN_LEASE_SECONDS",
        10.0,
        parse=positive_number,
        doc="a run's Redis lease, renewed by its instance every fifth of this; once it lapses (the instance died) any instance fails the run",
    )
    sweep_interval_seconds: float = setting(
        "AGENTMESH_RUN_SWEEP_SECONDS",
        5.0,
        parse=positive_number,
        doc="how often every orchestration instance looks for runs whose lease lapsed (also once at start-up)",
    )
    event_retention_seconds: int = setting(
        "AGENTMESH_RUN_EVENT_RETENTION_SECONDS",
        3600,
        parse=positive_integer,
        doc="how long a finished run's events stay readable by `JoinRun`",
    )
    delta_flush_ms: int = setting(
        "AGENTMESH_RUN_DELTA_FLUSH_MS",
        30,
        parse=integer,
        doc="answer deltas produced within this window become one event (a run's first delta, and one after a quiet window, go at once); 0 sends every delta as its own event",
    )
    reader_buffer_events: int = setting(
        "AGENTMESH_RUN_READER_BUFFER_EVENTS",
        2000,
        parse=positive_integer,
        doc="events held for one stream whose client stopped reading; past it the stream ends RESOURCE_EXHAUSTED (resume with `JoinRun` from the last event id)",
    )
    redis_buffer_events: int = setting(
        "AGENTMESH_RUN_REDIS_BUFFER_EVENTS",
        10000,
        parse=positive_integer,
        doc="events of one run held while Redis is unreachable (local readers keep streaming, Redis gets them when back); past it the run fails UNAVAILABLE",
    )


def hosts(name: str, raw: str) -> tuple[str, ...]:
    """Comma-separated `host` or `host:port` entries (IPv6 in brackets), lower-cased."""
    out = []
    for entry in (part.strip().lower() for part in raw.split(",")):
        if not entry:
            continue
        parts = urllib.parse.urlsplit(f"//{entry}")
        try:
            parts.port  # noqa: B018 -- raises on a malformed port
        except ValueError:
            raise SettingsError(f"{name}: bad port in {entry!r}") from None
        if not parts.hostname or parts.username is not None or parts.path or parts.query:
            raise SettingsError(f"{name} takes host or host:port entries, got {entry!r}")
        out.append(entry)
    return tuple(out)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ToolSettings:
    """Tools that agentmesh calls over HTTP (agents checks their urls, the outbound client their addresses)."""

    allowed_hosts: tuple[str, ...] = setting(
        "AGENTMESH_TOOL_ALLOWED_HOSTS",
        (),
        parse=hosts,
        doc="comma-separated `host` or `host:port`: http tools may use plain `http://` to these, and their addresses may be private or loopback",
    )
    wait_seconds: float = setting(
        "AGENTMESH_TOOL_WAIT_SECONDS",
        600.0,
        parse=positive_number,
        doc="how long a run waits for a client's tool outputs or a person's approval; then it fails with `DEADLINE_EXCEEDED`",
    )

    def allows(self, host: str, port: int) -> bool:
        """Whether `host` (as in a URL, IPv6 without brackets) on `port` is listed, by name or name:port."""
        host = host.lower()
        for entry in self.allowed_hosts:
            parts = urllib.parse.urlsplit(f"//{entry}")
            if parts.hostname == host and parts.port in (None, port):
                return True
        return False


_EXPORTERS = ("none", "console", "otlp", "file", "memory")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    # Set by embedded_defaults (`agentmesh up`), not by a variable.
    embedded: bool = False
    grpc_host: str = setting("AGENTMESH_GRPC_HOST", "127.0.0.1", doc="gRPC listen address")
    grpc_port: int = setting("AGENTMESH_GRPC_PORT", 50051, parse=integer, doc="gRPC port")
    http_host: str = setting("AGENTMESH_HTTP_HOST", "127.0.0.1", doc="gateway listen address")
    http_port: int = setting("AGENTMESH_HTTP_PORT", 8080, parse=integer, doc="gateway port")
    data_dir: str = setting(
        "AGENTMESH_DATA_DIR", ".agentmesh", doc="embedded mode: SQLite file, generated keys and secrets"
    )
    database_url: str = setting(
        "DATABASE_URL",
        "",
        shown="SQLite in the data dir",
        doc="SQLAlchemy URL; `postgresql+psycopg://…` for PostgreSQL",
    )
    # Each process serves from its own DATABASE_URL; only `agentmesh admin`, which acts on two
    # services' tables from one process, needs to be told where each one's are.
    identity_database_url: str = setting(
        "AGENTMESH_IDENTITY_DATABASE_URL",
        "",
        shown="`DATABASE_URL`",
        doc="`agentmesh admin`: identity's database (tenants, users), when identity has a database of its own",
    )
    conversation_database_url: str = setting(
        "AGENTMESH_CONVERSATION_DATABASE_URL",
        "",
        shown="`DATABASE_URL`",
        doc="`agentmesh admin`: conversation's database (prices, quotas, usage), when conversation has a database of its own",
    )
    redis_url: str = setting(
        "REDIS_URL", "", shown="in-process fakeredis", doc="`redis://host:port/db` for a real Redis"
    )
    redis_mode: str = setting(
        "AGENTMESH_REDIS_MODE",
        "standalone",
        parse=choice("standalone", "cluster"),
        doc="`cluster`: REDIS_URL names one node of a Redis Cluster (docs/operations.md, Redis Cluster)",
    )
    redis_retry_seconds: float = setting(
        "AGENTMESH_REDIS_RETRY_SECONDS",
        8.0,
        parse=number,
        doc="how long a Redis command retries a lost connection (backoff 50 ms doubling to 1 s) before it "
        "fails UNAVAILABLE; `0`: no retry (docs/operations.md, Redis outages)",
    )
    log_level: str = setting(
        "AGENTMESH_LOG_LEVEL",
        "INFO",
        parse=upper,
        doc="JSON logs, one object per line, with request id, tenant and trace id",
    )
    # "memory" is for tests (spans kept in the process); the README does not offer it.
    otel_exporter: str = setting(
        "AGENTMESH_OTEL_EXPORTER",
        "none",
        parse=choice(*_EXPORTERS, message="none, console, otlp or file"),
        doc="`none` (join callers' sampled traces only), `console`, `otlp` (needs `opentelemetry-exporter-otlp`) or `file`",
    )
    otel_file: str = setting(
        "AGENTMESH_OTEL_FILE",
        "",
        doc="with `file`: each finished span is appended here as one JSON line (trace_id, span_id, parent_span_id, name, service.name, kind, status)",
    )
    metrics_port: int = setting(
        "AGENTMESH_METRICS_PORT", 0, parse=integer, shown="`0` (off)", doc="Prometheus metrics on this port"
    )
    shutdown_grace_seconds: float = setting(
        "AGENTMESH_SHUTDOWN_GRACE_SECONDS",
        10.0,
        parse=number,
        doc="SIGTERM: how long in-flight calls and streams may finish",
    )
    health_interval_seconds: float = setting(
        "AGENTMESH_HEALTH_INTERVAL_SECONDS",
        1.0,
        parse=number,
        doc="how often health probes PostgreSQL and Redis",
    )
    tls: TlsSettings = dataclasses.field(default_factory=TlsSettings)
    auth: AuthSettings = dataclasses.field(default_factory=AuthSettings)
    peers: PeerSettings = dataclasses.field(default_factory=PeerSettings)
    gateway: GatewaySettings = dataclasses.field(default_factory=GatewaySettings)
    providers: ProviderSettings = dataclasses.field(default_factory=ProviderSettings)
    runs: RunSettings = dataclasses.field(default_factory=RunSettings)
    tools: ToolSettings = dataclasses.field(default_factory=ToolSettings)

    @property
    def grpc_address(self) -> str:
        return f"{self.grpc_host}:{self.grpc_port}"

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        path = pathlib.Path(self.data_dir).resolve() / "agentmesh.db"
        return f"sqlite+aiosqlite:///{path}"

    def database_url_for(self, service: str) -> str:
        """Where `service`'s tables are: its own database when one is named (identity, conversation),
        else the shared one (DATABASE_URL, or the embedded SQLite); "" when none is configured."""
        own = {"identity": self.identity_database_url, "conversation": self.conversation_database_url}
        if own.get(service):
            return own[service]
        return self.database_url or (self.effective_database_url if self.embedded else "")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Reads every declared variable; keyword overrides (CLI flags) win over the environment."""
        settings = dataclasses.replace(_read(cls, os.environ if env is None else env), **overrides)
        if settings.otel_exporter == "file" and not settings.otel_file:
            raise SettingsError("AGENTMESH_OTEL_EXPORTER=file needs AGENTMESH_OTEL_FILE (a file path)")
        return settings

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


# Every variable, in the order of the README's configuration table.
SETTINGS: tuple[Setting, ...] = tuple(_declared(Settings))


def markdown_table() -> str:
    """The README's configuration table, rendered from the declarations."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    lines += [f"| `{s.variable}` | {s.shown} | {s.doc} |" for s in SETTINGS]
    return "\n".join(lines)
