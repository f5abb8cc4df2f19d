"""Who is calling: access-token verification against a JWKS, and the Principal it yields.

Tokens are verified locally with a pinned algorithm list (no "none", no HMAC, so a public key can
never double as an HMAC secret). An unknown `kid` triggers one JWKS re-fetch (rate-limited), which is
how a key rotation reaches every verifier without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Mapping
from typing import Any

import jwt

from services.platform import errors
from services.platform.call_context import CallInfo, current_call

# EdDSA (Ed25519) is what identity signs with; ES256 is accepted for keys managed elsewhere.
ALGORITHMS = ("EdDSA", "ES256")
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "sub", "jti", "tenant")
ACCESS_TOKEN_TYPE = "access"

ROLE_OWNER = "owner"
ROLE_ADMIN = "admin"
ROLE_MEMBER = "member"
ROLE_SERVICE = "service"
# The platform operator: in no tenant, never in a token identity issues; only `agentmesh admin`
# acts as it, on the database. Tenant RPCs give it nothing (it is neither owner nor admin).
ROLE_OPERATOR = "operator"
ALL_TENANTS = "*"

# The one message every token failure answers with: which check failed is logged, never returned.
INVALID_TOKEN = "invalid or expired access token"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Principal:
    """The verified caller. Services take the tenant from here, never from a request field."""

    user_id: str
    tenant_id: str
    roles: frozenset[str]
    tier: str
    jti: str = ""
    issued_at: float = 0.0
    expires_at: float = 0.0
    token: str = ""

    @property
    def is_service(self) -> bool:
        return ROLE_SERVICE in self.roles

    @property
    def is_admin(self) -> bool:
        return bool(self.roles & {ROLE_OWNER, ROLE_ADMIN})

    def require_any_role(self, *roles: str) -> None:
        if not self.roles & set(roles):
            raise errors.PermissionDenied(
                f"this call needs one of the roles: {', '.join(sorted(roles))}",
                reason="ROLE_REQUIRED",
            )

    def require_admin(self) -> None:
        self.require_any_role(ROLE_OWNER, ROLE_ADMIN)

    def require_operator(self) -> None:
        if ROLE_OPERATOR not in self.roles:
            raise errors.PermissionDenied(
                "only the platform operator may do this", reason="OPERATOR_REQUIRED"
            )


JwksSource = Callable[[], Awaitable[Mapping[str, Any]]]
# Returns a reason string when the token was revoked (deny-listed jti, user's "valid after" time).
RevocationCheck = Callable[[Mapping[str, Any]], Awaitable[str | None]]


class TokenVerifier:
    """Verifies access tokens against a JWKS fetched from `jwks_source` and cached by kid."""

    def __init__(
        self,
        jwks_source: JwksSource,
        *,
        issuer: str,
        audience: str,
        revocation_check: RevocationCheck | None = None,
        refetch_interval: float = 1.0,
        leeway: float = 5.0,
        clock: Callable[[], float] = time.time,
        cache_size: int = 10_000,
    ):
        self._source = jwks_source
        self._issuer = issuer
        self._audience = audience
        self._revocation_check = revocation_check
        self._refetch_interval = refetch_interval
        self._leeway = leeway
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._last_fetch = float("-inf")
        self._lock = asyncio.Lock()
        self._verified: dict[str, Principal] = {}
        self._cache_size = cache_size

    async def _refresh(self, *, force: bool) -> None:
        async with self._lock:
            if self._keys and (not force or self._clock() - self._last_fetch < self._refetch_interval):
                return
            jwks = await self._source()
            keys: dict[str, jwt.PyJWK] = {}
            for data in jwks.get("keys", []):
                try:
                    key = jwt.PyJWK(dict(data))
                except jwt.PyJWTError:
                    continue
                if key.key_id and key.algorithm_name in ALGORITHMS:
                    keys[key.key_id] = key
            self._keys = keys
            self._last_fetch = self._clock()

    async def _key_for(self, kid: str) -> jwt.PyJWK:
        if kid not in self._keys:
            await self._refresh(force=True)
        key = self._keys.get(kid)
        if key is None:
            raise errors.Unauthenticated(INVALID_TOKEN, reason="UNKNOWN_KEY")
        return key

    async def verify(self, token: str) -> Principal:
        """The Principal of a valid access token; Unauthenticated otherwise.

        A token verified once is remembered until it expires (a signature check is most of the
        cost of a call); the revocation check still runs on every call.
        """
        cached = self._verified.get(token)
        if cached is not None and cached.expires_at + self._leeway > self._clock():
            await self._check_revocation(cached)
            return cached
        principal = await self._verify_signature_and_claims(token)
        if len(self._verified) >= self._cache_size:
            self._verified.pop(next(iter(self._verified)))
        self._verified[token] = principal
        await self._check_revocation(principal)
        return principal

    async def _check_revocation(self, principal: Principal) -> None:
        if self._revocation_check is not None:
            revoked = await self._revocation_check(
                {"jti": principal.jti, "sub": principal.user_id, "iat": principal.issued_at}
            )
            if revoked:
                raise errors.Unauthenticated(INVALID_TOKEN, reason="TOKEN_REVOKED")

    async def _verify_signature_and_claims(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise errors.Unauthenticated(INVALID_TOKEN, reason="MALFORMED_TOKEN") from None
        if header.get("alg") not in ALGORITHMS:
            raise errors.Unauthenticated(INVALID_TOKEN, reason="ALGORITHM_NOT_ALLOWED")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise errors.Unauthenticated(INVALID_TOKEN, reason="UNKNOWN_KEY")
        key = await self._key_for(kid)
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[key.algorithm_name],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": list(REQUIRED_CLAIMS)},
            )
        except jwt.ExpiredSignatureError:
            raise errors.Unauthenticated(INVALID_TOKEN, reason="TOKEN_EXPIRED") from None
        except jwt.PyJWTError:
            raise errors.Unauthenticated(INVALID_TOKEN, reason="INVALID_TOKEN") from None
        if claims.get("typ") != ACCESS_TOKEN_TYPE:
            raise errors.Unauthenticated(INVALID_TOKEN, reason="WRONG_TOKEN_TYPE")
        roles = claims.get("roles", [])
        # Every caller over RPC is in a tenant (a service: in all of them, "*"). The operator is in
        # none and acts only through `agentmesh admin`: a token claiming otherwise opens nothing.
        if not claims["tenant"] or (isinstance(roles, list) and ROLE_OPERATOR in roles):
            raise errors.Unauthenticated(INVALID_TOKEN, reason="NOT_A_TENANT_TOKEN")
        return Principal(
            user_id=str(claims["sub"]),
            tenant_id=str(claims["tenant"]),
            roles=frozenset(r for r in roles if isinstance(r, str))
            if isinstance(roles, list)
            else frozenset(),
            tier=str(claims.get("tier", "")),
            jti=str(claims["jti"]),
            issued_at=float(claims["iat"]),
            expires_at=float(claims["exp"]),
            token=token,
        )


def bearer_token(metadata: Iterable[tuple[str, str | bytes]]) -> str | None:
    """The token of an `authorization: Bearer ...` header, or None when there is none."""
    for key, value in metadata:
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            raise errors.Unauthenticated(INVALID_TOKEN, reason="MALFORMED_TOKEN")
    return None


def principal() -> Principal:
    """The verified caller of the call being served (Unauthenticated when there is none)."""
    call = current_call.get()
    if call is None:
        raise errors.Unauthenticated("no call in progress", reason="TOKEN_REQUIRED")
    return call.require_principal()


class Authentication:
    """Verifies the bearer token (if any) and puts the Principal on the call.

    Public methods may be called without a token; every other method requires one. A token that is
    present but bad is rejected even on a public method, so a client learns of it at once.
    """

    def __init__(self, verifier: TokenVerifier | None, *, public_methods: Collection[str]):
        self._verifier = verifier
        self._public = frozenset(public_methods)

    @contextlib.asynccontextmanager
    async def around(self, call: CallInfo) -> AsyncIterator[None]:
        token = bearer_token(call.metadata)
        if token is not None and self._verifier is not None:
            call.principal = await self._verifier.verify(token)
        elif call.method not in self._public and not _is_infrastructure(call.method):
            raise errors.Unauthenticated("this call needs an access token", reason="TOKEN_REQUIRED")
        yield


def _is_infrastructure(method: str) -> bool:
    return method.startswith(("/grpc.health.v1.", "/grpc.reflection."))
