"""Identity's Redis state: revocation marks every verifier reads, and login-failure counters."""

from __future__ import annotations

import dataclasses
import math

import redis.asyncio as aioredis

from services.platform import errors
from services.platform.runtime import DENIED_JTI_KEY, VALID_AFTER_KEY

# Past the token's lifetime the mark has nothing left to void; the margin covers verifier leeway.
REVOCATION_MARGIN_SECONDS = 60


class Revocations:
    def __init__(self, redis: aioredis.Redis, *, access_ttl: int):
        self._redis = redis
        self._access_ttl = access_ttl

    async def void_tokens_before(self, user_id: str, when: float) -> None:
        """Every access token of `user_id` issued before `when` stops verifying."""
        await self._redis.set(
            VALID_AFTER_KEY.format(user_id=user_id),
            repr(when),
            ex=self._access_ttl + REVOCATION_MARGIN_SECONDS,
        )

    async def deny(self, jti: str, *, expires_at: float, now: float) -> None:
        """Denies one access token until it would have expired anyway."""
        ttl = max(1, math.ceil(expires_at - now) + REVOCATION_MARGIN_SECONDS)
        await self._redis.set(DENIED_JTI_KEY.format(jti=jti), b"1", ex=ttl)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ThrottleLimits:
    """Failed logins allowed per fixed window, per tenant+username and per client address."""

    per_username: int = 10
    per_address: int = 50
    window_seconds: int = 300


class LoginThrottle:
    """Fixed-window failure counters. Only failures count; a success clears the username's counter.

    Never a permanent lock-out: a counter expires with its window. Checked before the password is
    verified, so a throttled caller does not even cost an argon2 run.
    """

    def __init__(self, redis: aioredis.Redis, limits: ThrottleLimits | None = None):
        self._redis = redis
        self.limits = limits or ThrottleLimits()

    @staticmethod
    def _user_key(tenant: str, username: str) -> str:
        return f"identity:login-fail:user:{tenant}:{username}"

    @staticmethod
    def _address_key(address: str) -> str:
        return f"identity:login-fail:addr:{address}"

    def _keys(self, tenant: str, username: str, address: str) -> list[tuple[str, int]]:
        keys = [(self._user_key(tenant, username), self.limits.per_username)]
        if address:
            keys.append((self._address_key(address), self.limits.per_address))
        return keys

    async def check(self, tenant: str, username: str, address: str) -> None:
        keys = self._keys(tenant, username, address)
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, _ in keys:
                pipe.get(key)
                pipe.pttl(key)
            values = await pipe.execute()
        for i, (_, limit) in enumerate(keys):
            count, pttl = values[2 * i], values[2 * i + 1]
            if count is not None and int(count) >= limit:
                retry_after = pttl / 1000 if pttl and pttl > 0 else self.limits.window_seconds
                raise errors.ResourceExhausted(
                    "too many failed sign-in attempts; try again later",
                    retry_after=retry_after,
                    reason="LOGIN_THROTTLED",
                )

    async def failed(self, tenant: str, username: str, address: str) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, _ in self._keys(tenant, username, address):
                pipe.incr(key)
                pipe.expire(key, self.limits.window_seconds, nx=True)
            await pipe.execute()

    async def succeeded(self, tenant: str, username: str) -> None:
        await self._redis.delete(self._user_key(tenant, username))


def client_address(peer: str) -> str:
    """The host of a grpc peer string ("ipv4:1.2.3.4:5678", "ipv6:[::1]:5678"), without the port."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return peer
