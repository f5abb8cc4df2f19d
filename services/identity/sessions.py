"""Starting and ending sessions: an access token plus a refresh token in a family."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Protocol

from services.identity.models import RefreshRecord, Session, Tenant, User
from services.identity.tokens import TokenIssuer, hash_refresh_token, new_refresh_token, token_time
from services.platform.timestamps import micros

log = logging.getLogger("agentmesh.identity.sessions")

PRUNE_INTERVAL_SECONDS = 3600.0


def at(seconds: float) -> int:
    """A float-seconds instant (a clock reading, a token's iat) as domain time (int microseconds)."""
    return micros(lambda: seconds)


class SessionStore(Protocol):
    """The refresh tokens' table, as sessions use it."""

    async def add_refresh(self, record: RefreshRecord) -> None: ...
    async def prune_dead_families(self, *, now: int) -> int: ...
    async def revoke_user_sessions(self, user_id: str, *, now: int) -> None: ...


class Revoker(Protocol):
    """The revocation marks every verifier reads (Redis)."""

    async def void_tokens_before(self, user_id: str, when: float) -> None: ...
    async def deny(self, jti: str, *, expires_at: float, now: float) -> None: ...


class Sessions:
    def __init__(
        self,
        *,
        store: SessionStore,
        tokens: TokenIssuer,
        revocations: Revoker,
        clock: Callable[[], float],
        max_session_seconds: int = 90 * 24 * 3600,
    ) -> None:
        self._store = store
        self.tokens = tokens
        self.max_session_seconds = max_session_seconds
        self._revocations = revocations
        self._clock = clock

    def now(self) -> float:
        return token_time(self._clock())

    async def start(
        self,
        user: User,
        tenant: Tenant,
        *,
        family_id: str | None = None,
        family_started: float | None = None,
        issued_at: float | None = None,
    ) -> Session:
        """A new access token and a refresh token (in `family_id`, begun at `family_started`, or in a
        new family). No refresh token outlives its family's maximum session."""
        now = self.now() if issued_at is None else issued_at
        expires = now + self.tokens.refresh_ttl
        if family_started is not None:
            expires = min(expires, family_started + self.max_session_seconds)
        access = self.tokens.access_token(
            subject=user.id, tenant=tenant.id, roles=user.roles, tier=tenant.tier, issued_at=now
        )
        refresh = new_refresh_token()
        await self._store.add_refresh(
            RefreshRecord(
                token_hash=hash_refresh_token(refresh),
                family_id=family_id or str(uuid.uuid4()),
                user_id=user.id,
                tenant_id=tenant.id,
                issued_at=at(now),
                expires_at=at(expires),
            )
        )
        return Session(access.token, refresh, self.tokens.access_ttl, int(expires - now))

    async def prune_forever(self, interval: float = PRUNE_INTERVAL_SECONDS) -> None:
        """Background job: deletes the refresh tokens of sessions that are over."""
        while True:
            try:
                pruned = await self._store.prune_dead_families(now=at(self._clock()))
                if pruned:
                    log.info("pruned refresh tokens", extra={"fields": {"rows": pruned}})
            except asyncio.CancelledError:
                raise
            except Exception:
                # A database outage must not end the job; the next round tries again.
                log.exception("refresh token pruning failed")
            await asyncio.sleep(interval)

    async def end_all(self, user_id: str, *, as_of: float) -> None:
        """Voids the user's access tokens issued before `as_of` and revokes every refresh family."""
        await end_sessions(self._store, self._revocations, user_id, as_of=as_of)


async def end_sessions(store: SessionStore, revocations: Revoker, user_id: str, *, as_of: float) -> None:
    """Sessions.end_all without a token issuer (the operator's CLI holds no signing key)."""
    # Redis first: the access tokens are what stay usable without asking identity.
    await revocations.void_tokens_before(user_id, as_of)
    await store.revoke_user_sessions(user_id, now=at(as_of))
