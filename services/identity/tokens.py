"""Minting access tokens (JWT, EdDSA) and opaque refresh tokens."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import secrets
import uuid
from collections.abc import Iterable

from services.identity.keys import KeySet
from services.platform.auth import ACCESS_TOKEN_TYPE

# Refresh tokens are random, never JWTs: nothing in them to verify offline, only to look up hashed.
REFRESH_PREFIX = "amr_"
REFRESH_TOKEN_BYTES = 32
MAX_REFRESH_TOKEN_LENGTH = 128


def token_time(now: float) -> float:
    """`iat` with millisecond precision (floored).

    Whole seconds would not do: a password change marks the user's earlier tokens void as of `now`
    and returns new tokens issued at `now`; with whole seconds, tokens minted earlier in the same
    second would survive the change or the new ones would die with them.
    """
    return math.floor(now * 1000) / 1000


@dataclasses.dataclass(frozen=True)
class AccessToken:
    token: str
    jti: str
    issued_at: float
    expires_at: float


class TokenIssuer:
    def __init__(self, *, keys: KeySet, issuer: str, audience: str, access_ttl: int, refresh_ttl: int):
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl

    def access_token(
        self, *, subject: str, tenant: str, roles: Iterable[str], tier: str, issued_at: float
    ) -> AccessToken:
        jti = uuid.uuid4().hex
        expires_at = issued_at + self.access_ttl
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "tenant": tenant,
            "roles": list(roles),
            "tier": tier,
            "typ": ACCESS_TOKEN_TYPE,
            "jti": jti,
            "iat": issued_at,
            "exp": expires_at,
        }
        return AccessToken(self.keys.sign(claims), jti, issued_at, expires_at)


def new_refresh_token() -> str:
    return REFRESH_PREFIX + secrets.token_urlsafe(REFRESH_TOKEN_BYTES)


def hash_refresh_token(token: str) -> str:
    """SHA-256 suffices here (unlike passwords): the token has 256 random bits, nothing to guess."""
    return hashlib.sha256(token.encode()).hexdigest()


def looks_like_refresh_token(token: str) -> bool:
    return token.startswith(REFRESH_PREFIX) and len(token) <= MAX_REFRESH_TOKEN_LENGTH
