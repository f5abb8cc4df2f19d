"""agentmesh.identity.v1.IdentityService: tenants, users, passwords and the tokens the mesh verifies."""

from __future__ import annotations

import logging
from typing import Any

from agentmesh.identity.v1 import identity_service_pb2, identity_service_pb2_grpc
from services.identity import demo
from services.identity.admin import TenantAdmin
from services.identity.keys import KeySet, signing_key_file
from services.identity.passwords import Passwords
from services.identity.quota import ConversationQuota, NoQuota
from services.identity.redis_state import LoginThrottle, Revocations
from services.identity.service import IdentityService, signup_open
from services.identity.servicer import PUBLIC_RPCS, IdentityServicer
from services.identity.sessions import Sessions
from services.identity.store import IdentityStore
from services.identity.tokens import TokenIssuer
from services.platform.runtime import Runtime
from services.platform.server import Built, ServiceRegistration

SERVICE_NAME = identity_service_pb2.DESCRIPTOR.services_by_name["IdentityService"].full_name

log = logging.getLogger("agentmesh.identity")


async def build(runtime: Runtime) -> Built[IdentityService]:
    """Identity on `runtime`: refuses to start half-configured outside the embedded mode, and seeds
    the demo tenant only in it."""
    settings = runtime.settings
    auth = settings.auth
    keys = KeySet.load(signing_key_file(settings), auth.previous_signing_key_files)
    store = IdentityStore(runtime.engine)
    passwords = Passwords()
    revocations = Revocations(runtime.redis, access_ttl=auth.access_token_ttl_seconds)
    sessions = Sessions(
        store=store,
        tokens=TokenIssuer(
            keys=keys,
            issuer=auth.issuer,
            audience=auth.audience,
            access_ttl=auth.access_token_ttl_seconds,
            refresh_ttl=auth.refresh_token_ttl_seconds,
        ),
        revocations=revocations,
        clock=runtime.clock,
        max_session_seconds=auth.session_max_seconds,
    )
    service = IdentityService(
        store=store,
        passwords=passwords,
        sessions=sessions,
        throttle=LoginThrottle(runtime.redis),
        revocations=revocations,
        keys=keys,
        service_secret=auth.service_secret,
        clock=runtime.clock,
        signup_open=signup_open(settings),
        # The quota is optional to identity: without conversation's address WhoAmI shows it UNKNOWN.
        quota=(
            ConversationQuota(runtime.peers.channel(settings.peers.conversation))
            if settings.peers.conversation
            else NoQuota()
        ),
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
    registration = ServiceRegistration(
        name=SERVICE_NAME,
        add_to_server=lambda server: identity_service_pb2_grpc.add_IdentityServiceServicer_to_server(
            servicer, server
        ),
        public_methods=frozenset(f"/{SERVICE_NAME}/{rpc}" for rpc in PUBLIC_RPCS),
        background=[sessions.prune_forever],
    )
    return Built(service=service, registration=registration)
