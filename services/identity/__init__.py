"""agentmesh.identity.v1.IdentityService: tenants, users, passwords and the tokens the mesh verifies."""

from __future__ import annotations

import logging
import pathlib
from typing import Any

from agentmesh.identity.v1 import identity_service_pb2, identity_service_pb2_grpc
from services.identity import demo
from services.identity.admin import TenantAdmin
from services.identity.keys import KeySet, ensure_key_file
from services.identity.passwords import Passwords
from services.identity.redis_state import LoginThrottle, Revocations
from services.identity.service import IdentityService
from services.identity.servicer import IdentityServicer
from services.identity.sessions import Sessions
from services.identity.store import IdentityStore
from services.identity.tokens import TokenIssuer
from services.platform.runtime import Runtime
from services.platform.server import ServiceRegistration
from services.platform.settings import Settings, SettingsError

SERVICE_NAME = identity_service_pb2.DESCRIPTOR.services_by_name["IdentityService"].full_name
PUBLIC_METHODS = frozenset(
    f"/{SERVICE_NAME}/{m}"
    for m in ("SignUp", "Login", "RefreshToken", "Logout", "GetJwks", "IssueServiceToken")
)

log = logging.getLogger("agentmesh.identity")


def _require_secrets(runtime: Runtime) -> str:
    """The signing key file to load; in production, refuses to start without key or service secret."""
    settings = runtime.settings
    auth = settings.auth
    if settings.embedded:
        path = auth.signing_key_file or str(pathlib.Path(settings.data_dir) / "signing_key.pem")
        if ensure_key_file(path):
            log.info("generated a signing key", extra={"fields": {"path": path}})
        return path
    if not auth.signing_key_file:
        raise SettingsError(
            "AGENTMESH_SIGNING_KEY_FILE is required: identity will not start without an Ed25519 "
            "signing key (PEM) outside the embedded mode"
        )
    if not auth.service_secret:
        raise SettingsError(
            "AGENTMESH_SERVICE_SECRET is required: identity will not start without the shared service "
            "secret outside the embedded mode"
        )
    return auth.signing_key_file


def signup_open(settings: Settings) -> bool:
    """AGENTMESH_SIGNUP, else open only in the embedded mode (a laptop, not a public platform)."""
    chosen = settings.auth.signup_open
    return settings.embedded if chosen is None else chosen


async def register(runtime: Runtime, **overrides: Any) -> ServiceRegistration:
    """Builds identity on `runtime`. `overrides` (tests, benchmarks): passwords=Passwords,
    throttle_limits=ThrottleLimits."""
    settings = runtime.settings
    key_file = _require_secrets(runtime)
    keys = KeySet.load(key_file, settings.auth.previous_signing_key_files)
    store = IdentityStore(runtime.engine)
    passwords = overrides.get("passwords") or Passwords()
    revocations = Revocations(runtime.redis, access_ttl=settings.auth.access_token_ttl_seconds)
    sessions = Sessions(
        store=store,
        tokens=TokenIssuer(
            keys=keys,
            issuer=settings.auth.issuer,
            audience=settings.auth.audience,
            access_ttl=settings.auth.access_token_ttl_seconds,
            refresh_ttl=settings.auth.refresh_token_ttl_seconds,
        ),
        revocations=revocations,
        clock=runtime.clock,
        max_session_seconds=settings.auth.session_max_seconds,
    )
    service = IdentityService(
        store=store,
        passwords=passwords,
        sessions=sessions,
        throttle=LoginThrottle(runtime.redis, overrides.get("throttle_limits")),
        revocations=revocations,
        keys=keys,
        service_secret=settings.auth.service_secret,
        clock=runtime.clock,
        signup_open=signup_open(settings),
    )
    admin = TenantAdmin(
        store=store,
        passwords=passwords,
        sessions=sessions,
        revocations=revocations,
        page_tokens=runtime.page_tokens,
        clock=runtime.clock,
    )

    async def own_jwks() -> dict[str, Any]:
        # Identity verifies tokens with its own keys: no RPC to itself.
        return keys.jwks()

    runtime.jwks_source = own_jwks
    if settings.embedded and await demo.seed(store, passwords, runtime.clock):
        log.info("created the demo tenant", extra={"fields": {"tenant": demo.DEMO_TENANT}})
    servicer = IdentityServicer(service=service, admin=admin)
    return ServiceRegistration(
        name=SERVICE_NAME,
        add_to_server=lambda server: identity_service_pb2_grpc.add_IdentityServiceServicer_to_server(
            servicer, server
        ),
        public_methods=PUBLIC_METHODS,
        background=[sessions.prune_forever],
    )
