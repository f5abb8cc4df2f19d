"""The bootstrap: builds, once per process, everything the services share, and closes it.

`Runtime.create` does the I/O; services receive the Runtime and take what they need from it. Nothing
here is created at import time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import redis.asyncio as aioredis
from google.protobuf import json_format
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from sqlalchemy.ext.asyncio import AsyncEngine

from services.platform import db, errors, redis_client, telemetry
from services.platform.auth import JwksSource, TokenVerifier
from services.platform.batching import Batcher
from services.platform.pagination import PageTokens
from services.platform.peers import PeerChannels
from services.platform.peers import call as call_peer
from services.platform.settings import Settings, SettingsError

log = logging.getLogger("agentmesh.runtime")

# Keys identity writes and every verifier reads: the deny-listed jti of a logged-out access token,
# and a user's "tokens issued before this time are void" mark (password change, disable, delete).
DENIED_JTI_KEY = "auth:denied-jti:{jti}"
VALID_AFTER_KEY = "auth:valid-after:{user_id}"


def embedded_secrets(data_dir: str) -> dict[str, str]:
    """Secrets of the embedded mode, made once and kept in the data directory (mode 0600)."""
    path = pathlib.Path(data_dir) / "secrets.json"
    if path.exists():
        stored: dict[str, str] = json.loads(path.read_text())
        return stored
    path.parent.mkdir(parents=True, exist_ok=True)
    values = {"service_secret": secrets.token_urlsafe(32), "page_token_secret": secrets.token_urlsafe(32)}
    path.touch(mode=0o600)
    path.write_text(json.dumps(values))
    return values


def with_embedded_secrets(settings: Settings) -> Settings:
    stored = embedded_secrets(settings.data_dir)
    auth = dataclasses.replace(
        settings.auth,
        service_secret=settings.auth.service_secret or stored["service_secret"],
        page_token_secret=settings.auth.page_token_secret or stored["page_token_secret"],
        signing_key_file=settings.auth.signing_key_file
        or str(pathlib.Path(settings.data_dir) / "signing_key.pem"),
    )
    return dataclasses.replace(settings, auth=auth)


# The peers each process kind calls: every service verifies tokens with identity's JWKS;
# orchestration also calls agents and conversation; the gateway forwards to all four.
PEERS_NEEDED: dict[str, tuple[str, ...]] = {
    "identity": (),
    "agents": ("identity",),
    "conversation": ("identity",),
    "orchestration": ("identity", "agents", "conversation"),
    "gateway": ("identity", "agents", "conversation", "orchestration"),
}


def with_colocated_peers(settings: Settings, names: Iterable[str]) -> Settings:
    """Peers running in this very process are reached at its own address (no variable needed)."""
    here = set(names)
    peers = settings.peers

    def address(name: str, configured: str) -> str:
        return configured or (settings.grpc_address if name in here else "")

    peers = dataclasses.replace(
        peers,
        identity=address("identity", peers.identity),
        agents=address("agents", peers.agents),
        conversation=address("conversation", peers.conversation),
        orchestration=address("orchestration", peers.orchestration),
    )
    return dataclasses.replace(settings, peers=peers)


def missing_configuration(settings: Settings, names: Iterable[str]) -> list[str]:
    """The variables a production process running `names` needs and does not have: all of them
    at once, so one failed start tells the operator everything to set."""
    names = set(names)
    required = []
    if names - {"gateway"}:
        required.append(("DATABASE_URL", settings.database_url))
    # The gateway counts each user's WebSockets in Redis, so the limit holds across replicas.
    required.append(("REDIS_URL", settings.redis_url))
    if names - {"gateway"}:
        required.append(("AGENTMESH_PAGE_TOKEN_SECRET", settings.auth.page_token_secret))
    if "identity" in names:
        required.append(("AGENTMESH_SIGNING_KEY_FILE", settings.auth.signing_key_file))
    if names & {"identity", "orchestration"}:
        # Identity checks it; orchestration exchanges it for its service token.
        required.append(("AGENTMESH_SERVICE_SECRET", settings.auth.service_secret))
    peers = sorted({peer for name in names for peer in PEERS_NEEDED[name]}, key=list(PEERS_NEEDED).index)
    required += [(f"AGENTMESH_{peer.upper()}_ADDR", getattr(settings.peers, peer)) for peer in peers]
    return [variable for variable, value in required if not value]


def revocation_check(
    redis: aioredis.Redis, *, cache_seconds: float = 0.0, clock: Callable[[], float] = time.monotonic
) -> Callable[[Mapping[str, Any]], Awaitable[str | None]]:
    """Checks the deny-list and the user's valid-after mark in Redis.

    With `cache_seconds`, a token found valid is not asked about again for that long in this
    process: a logout then takes up to that long to reach every instance, in exchange for one
    Redis round trip per token per period instead of per call.
    """
    fresh: dict[str, float] = {}

    async def read(checked: list[Mapping[str, Any]]) -> list[tuple[Any, Any]]:
        # Two objects (a token, a user), so two hash slots on a cluster: a non-transactional
        # pipeline is one round trip on a single server and one per owning node on a cluster.
        async with redis.pipeline(transaction=False) as pipe:
            for claims in checked:
                pipe.get(DENIED_JTI_KEY.format(jti=claims["jti"]))
                pipe.get(VALID_AFTER_KEY.format(user_id=claims["sub"]))
            values = await pipe.execute()
        return list(zip(values[::2], values[1::2], strict=True))

    # The checks of calls that arrive together (a burst reaches its handlers at once) share one
    # round trip, and a few connections rather than one each.
    reads: Batcher[Mapping[str, Any], tuple[Any, Any]] = Batcher(read, max_batch=128, in_flight=2)

    async def check(claims: Mapping[str, Any]) -> str | None:
        jti = str(claims["jti"])
        if cache_seconds and fresh.get(jti, float("-inf")) > clock():
            return None
        denied, valid_after = await reads.submit(claims)
        if denied is not None:
            return "logged out"
        if valid_after is not None and float(claims["iat"]) < float(valid_after):
            return "revoked"
        if cache_seconds:
            if len(fresh) > 10_000:
                fresh.clear()
            fresh[jti] = clock() + cache_seconds
        return None

    return check


class Runtime:
    """Settings, database engine (and its autocommit pool), Redis, tracer provider, peer channels,
    token verifier, page tokens."""

    def __init__(
        self,
        *,
        settings: Settings,
        engine: AsyncEngine,
        redis: aioredis.Redis,
        tracer_provider: TracerProvider,
        peers: PeerChannels,
        page_tokens: PageTokens,
        clock: Callable[[], float] = time.time,
        tracing: bool = True,
    ):
        self.settings = settings
        self.engine = engine
        # PostgreSQL only; None on SQLite, whose single writer gains nothing from a second pool.
        self.autocommit = db.AutocommitPool(engine) if engine.dialect.name == "postgresql" else None
        self.redis = redis
        # No Redis URL: `redis` is fakeredis inside this process, read by no other.
        self.redis_in_process = not settings.redis_url
        self.tracer_provider = tracer_provider
        # Whether spans are exported; without, servers and peer channels skip OpenTelemetry.
        self.tracing = tracing
        self.peers = peers
        self.page_tokens = page_tokens
        self.clock = clock
        # Replaced by identity when it runs in this process (it then reads its own keys directly).
        self.jwks_source: JwksSource = self._jwks_from_identity
        self.verifier = TokenVerifier(
            lambda: self.jwks_source(),
            issuer=settings.auth.issuer,
            audience=settings.auth.audience,
            revocation_check=revocation_check(redis, cache_seconds=settings.auth.revocation_cache_seconds),
            clock=clock,
        )

    @classmethod
    async def create(
        cls, settings: Settings, *, service_name: str = "agentmesh", span_exporter: SpanExporter | None = None
    ) -> Runtime:
        if not settings.auth.page_token_secret:
            raise SettingsError("AGENTMESH_PAGE_TOKEN_SECRET is required outside the embedded mode")
        engine = db.create_engine(settings.effective_database_url)
        redis = redis_client.create_redis(
            settings.redis_url, mode=settings.redis_mode, retry_seconds=settings.redis_retry_seconds
        )
        provider = telemetry.create_tracer_provider(
            service_name, settings.otel_exporter, span_exporter=span_exporter, file_path=settings.otel_file
        )
        tracing = telemetry.exports(settings.otel_exporter, span_exporter)
        peers = PeerChannels(
            deadline_cap=settings.peers.deadline_seconds,
            tls=settings.tls,
            tracer_provider=provider if tracing else None,
        )
        return cls(
            settings=settings,
            engine=engine,
            redis=redis,
            tracer_provider=provider,
            peers=peers,
            page_tokens=PageTokens(settings.auth.page_token_secret.encode()),
            tracing=tracing,
        )

    async def _jwks_from_identity(self) -> Mapping[str, Any]:
        from agentmesh.identity.v1 import identity_service_pb2, identity_service_pb2_grpc

        stub = identity_service_pb2_grpc.IdentityServiceStub(self.peers.channel(self.settings.peers.identity))
        try:
            # wait_for_ready: right after start-up the channel may still be backing off from a
            # refused connection (identity starting later); wait for it within the timeout.
            response = await call_peer(
                stub.GetJwks, identity_service_pb2.GetJwksRequest(), timeout=5, wait_for_ready=True
            )
        except errors.AgentmeshError as exc:
            # The caller's call fails UNAVAILABLE (retryable), not INTERNAL, while identity is away.
            raise errors.Unavailable(f"identity's signing keys are unavailable: {exc.code.name}") from None
        return json_format.MessageToDict(response, preserving_proto_field_name=True)

    async def close(self) -> None:
        await self.peers.close()
        await self.redis.aclose()
        if self.autocommit is not None:
            await self.autocommit.close()
        await self.engine.dispose()
        self.tracer_provider.shutdown()
