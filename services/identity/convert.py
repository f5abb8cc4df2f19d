"""Proto <-> domain conversions of the identity service (the servicer's only helpers).

Roles and tiers are names in the domain and enum numbers only here; times go through the
platform's timestamps module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import duration_pb2

from agentmesh.identity.v1 import identity_service_pb2 as pb
from services.identity.models import Identity, Session, Tenant, TenantQuota, User, UserChanges
from services.platform import auth
from services.platform.timestamps import to_timestamp

ROLE_TO_PB: Mapping[str, pb.Role.ValueType] = {
    auth.ROLE_OWNER: pb.ROLE_OWNER,
    auth.ROLE_ADMIN: pb.ROLE_ADMIN,
    auth.ROLE_MEMBER: pb.ROLE_MEMBER,
    auth.ROLE_SERVICE: pb.ROLE_SERVICE,
    auth.ROLE_OPERATOR: pb.ROLE_OPERATOR,
}
PB_TO_ROLE = {v: k for k, v in ROLE_TO_PB.items()}
TIER_TO_PB: Mapping[str, pb.Tier.ValueType] = {
    "free": pb.TIER_FREE,
    "pro": pb.TIER_PRO,
    "enterprise": pb.TIER_ENTERPRISE,
}


def role_names(roles: Iterable[int]) -> tuple[str, ...]:
    # An unknown enum value maps to a name the service rejects with a field violation.
    return tuple(PB_TO_ROLE.get(pb.Role.ValueType(r), f"role {r}") for r in roles)


def _role_values(roles: Iterable[str]) -> list[pb.Role.ValueType]:
    return [ROLE_TO_PB[r] for r in roles if r in ROLE_TO_PB]


def _tier_value(tier: str) -> pb.Tier.ValueType:
    return TIER_TO_PB.get(tier, pb.TIER_UNSPECIFIED)


def tenant_pb(tenant: Tenant) -> pb.Tenant:
    return pb.Tenant(
        id=tenant.id,
        name=tenant.name,
        display_name=tenant.display_name,
        tier=_tier_value(tenant.tier),
        etag=tenant.etag,
        create_time=to_timestamp(tenant.create_time),
        update_time=to_timestamp(tenant.update_time),
    )


def user_pb(user: User) -> pb.User:
    return pb.User(
        id=user.id,
        tenant_id=user.tenant_id,
        username=user.username,
        display_name=user.display_name,
        roles=_role_values(user.roles),
        disabled=user.disabled,
        etag=user.etag,
        create_time=to_timestamp(user.create_time),
        update_time=to_timestamp(user.update_time),
    )


def tokens_pb(session: Session) -> pb.AuthTokens:
    return pb.AuthTokens(
        access_token=session.access_token,
        refresh_token=session.refresh_token,
        token_type="Bearer",
        access_token_lifetime=duration_pb2.Duration(seconds=session.access_ttl),
        refresh_token_lifetime=duration_pb2.Duration(seconds=session.refresh_ttl),
    )


def who_am_i_pb(found: Identity) -> pb.WhoAmIResponse:
    return pb.WhoAmIResponse(
        user=user_pb(found.user) if found.user else None,
        tenant=tenant_pb(found.tenant) if found.tenant else None,
        roles=_role_values(found.roles),
        tier=_tier_value(found.tier),
        quota=quota_pb(found.quota) if found.quota else None,
    )


def quota_pb(quota: TenantQuota) -> pb.TenantQuota:
    if not quota.known:
        return pb.TenantQuota(status=pb.QUOTA_STATUS_UNKNOWN)
    return pb.TenantQuota(
        status=pb.QUOTA_STATUS_EXHAUSTED if quota.exhausted else pb.QUOTA_STATUS_AVAILABLE,
        limit_tokens=quota.limit_tokens,
        used_tokens=quota.used_tokens,
        remaining_tokens=quota.remaining_tokens,
        limit_cost_micros=quota.limit_cost_micros,
        used_cost_micros=quota.used_cost_micros,
        reset_time=to_timestamp(quota.reset_time_us),
    )


def jwks_pb(jwks: Mapping[str, Any]) -> list[pb.JsonWebKey]:
    return [pb.JsonWebKey(**key) for key in jwks["keys"]]


def user_changes(user: pb.User) -> UserChanges:
    """The fields of an UpdateUser request the mask may name (the rest of the message is ignored)."""
    return UserChanges(display_name=user.display_name, roles=role_names(user.roles), disabled=user.disabled)
