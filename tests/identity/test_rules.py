"""Identity's rules against the fakes of tests/fakes/identity.py: no gRPC, database, Redis or argon2,
so a broken rule fails here in milliseconds before the served tests say the same more slowly."""

from __future__ import annotations

import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.identity.admin import TenantAdmin
from services.identity.keys import KeySet
from services.identity.models import UserChanges
from services.identity.operator import Operator, operator_principal
from services.identity.service import IdentityService
from services.identity.sessions import Sessions
from services.identity.tokens import TokenIssuer
from services.platform import errors
from services.platform.auth import ROLE_ADMIN, ROLE_MEMBER, ROLE_OPERATOR, ROLE_OWNER, Principal
from services.platform.pagination import PageTokens
from tests.fakes.identity import FakeHasher, FakeIdentityStore, FakeQuota, FakeRevocations, FakeThrottle

PASSWORD = "correct horse battery"


@dataclasses.dataclass
class World:
    store: FakeIdentityStore
    revocations: FakeRevocations
    throttle: FakeThrottle
    service: IdentityService
    admin: TenantAdmin
    operator: Operator


def world(*, signup_open: bool = True) -> World:
    store, revocations, throttle, hasher = (
        FakeIdentityStore(),
        FakeRevocations(),
        FakeThrottle(3),
        FakeHasher(),
    )
    clock = lambda: 1_700_000_000.0  # noqa: E731
    keys = KeySet(Ed25519PrivateKey.generate())
    sessions = Sessions(
        store=store,
        tokens=TokenIssuer(keys=keys, issuer="i", audience="a", access_ttl=900, refresh_ttl=3600),
        revocations=revocations,
        clock=clock,
    )
    return World(
        store,
        revocations,
        throttle,
        IdentityService(
            store=store,
            passwords=hasher,
            sessions=sessions,
            throttle=throttle,
            revocations=revocations,
            keys=keys,
            service_secret="s",
            clock=clock,
            signup_open=signup_open,
            quota=FakeQuota(),
        ),
        TenantAdmin(
            store=store,
            passwords=hasher,
            sessions=sessions,
            revocations=revocations,
            page_tokens=PageTokens(b"k"),
            clock=clock,
        ),
        Operator(store=store, passwords=hasher, revocations=revocations, clock=clock),
    )


def as_principal(user_id: str, tenant_id: str, *roles: str) -> Principal:
    return Principal(user_id=user_id, tenant_id=tenant_id, roles=frozenset(roles), tier="free")


async def signed_up(w: World) -> Principal:
    signed = await w.service.sign_up(
        tenant_name="acme", username="boss", password=PASSWORD, display_name="Boss", request_id=""
    )
    return as_principal(signed.user.id, signed.tenant.id, ROLE_OWNER)


async def test_closed_sign_up_is_refused_and_stores_nothing():
    w = world(signup_open=False)
    with pytest.raises(errors.PermissionDenied) as caught:
        await signed_up(w)
    assert caught.value.reason == "SIGNUP_CLOSED" and not w.store.tenants


async def test_a_retried_sign_up_answers_the_first_tenant_and_a_changed_one_is_refused():
    w = world()
    kw = dict(tenant_name="acme", username="boss", password=PASSWORD, display_name="Boss")
    first = await w.service.sign_up(**kw, request_id="r1")
    again = await w.service.sign_up(**kw, request_id="r1")
    assert again.tenant.id == first.tenant.id and len(w.store.tenants) == 1
    with pytest.raises(errors.InvalidArgument) as caught:
        await w.service.sign_up(**{**kw, "display_name": "Other"}, request_id="r1")
    assert [v.field for v in caught.value.violations] == ["request_id"]


async def test_request_ids_have_the_platform_limit():
    w = world()
    with pytest.raises(errors.InvalidArgument) as caught:
        await w.service.sign_up(
            tenant_name="acme", username="boss", password=PASSWORD, display_name="", request_id="r" * 129
        )
    assert [v.field for v in caught.value.violations] == ["request_id"]
    assert (
        await w.service.sign_up(
            tenant_name="acme", username="boss", password=PASSWORD, display_name="", request_id="r" * 128
        )
    ).tenant.name == "acme"


async def test_login_failures_look_alike_and_are_throttled():
    w = world()
    await signed_up(w)
    reasons = []
    for tenant, username, password in (
        ("nope", "boss", PASSWORD),
        ("acme", "ghost", PASSWORD),
        ("acme", "boss", "wrong!!"),
    ):
        with pytest.raises(errors.Unauthenticated) as caught:
            await w.service.login(tenant=tenant, username=username, password=password, client_address="")
        reasons.append((caught.value.reason, str(caught.value)))
    assert len(set(reasons)) == 1
    await expect_throttled(w)


async def expect_throttled(w: World) -> None:
    for _ in range(2):
        with pytest.raises(errors.Unauthenticated):
            await w.service.login(tenant="acme", username="boss", password="wrong!!", client_address="")
    with pytest.raises(errors.ResourceExhausted):
        await w.service.login(tenant="acme", username="boss", password=PASSWORD, client_address="")


async def test_a_spent_refresh_token_coming_back_revokes_its_family():
    w = world()
    signed = await w.service.sign_up(
        tenant_name="acme", username="boss", password=PASSWORD, display_name="", request_id=""
    )
    second = await w.service.refresh(refresh_token=signed.session.refresh_token)
    with pytest.raises(errors.Unauthenticated) as caught:
        await w.service.refresh(refresh_token=signed.session.refresh_token)
    assert caught.value.reason == "REFRESH_TOKEN_REUSED"
    assert all(r.revoked_at for r in w.store.tokens.values())
    with pytest.raises(errors.Unauthenticated):
        await w.service.refresh(refresh_token=second.refresh_token)


async def test_roles_are_granted_only_by_whom_may():
    w = world()
    owner = await signed_up(w)
    admin_user = await w.admin.create_user(
        owner, username="adm", password=PASSWORD, display_name="", roles=[ROLE_ADMIN], request_id=""
    )
    admin = as_principal(admin_user.id, owner.tenant_id, ROLE_ADMIN)
    with pytest.raises(errors.PermissionDenied) as caught:
        await w.admin.create_user(
            admin, username="o2", password=PASSWORD, display_name="", roles=[ROLE_OWNER], request_id=""
        )
    assert caught.value.reason == "OWNER_REQUIRED"
    with pytest.raises(errors.PermissionDenied) as caught:
        await w.admin.create_user(
            owner, username="op", password=PASSWORD, display_name="", roles=[ROLE_OPERATOR], request_id=""
        )
    assert caught.value.reason == "ROLE_NOT_GRANTABLE"
    member = as_principal("m", owner.tenant_id, ROLE_MEMBER)
    with pytest.raises(errors.PermissionDenied):
        await w.admin.get_tenant(member)
    assert {u.username for u in w.store.users.values()} == {"boss", "adm"}


async def test_the_last_owner_stays_and_a_role_change_voids_tokens():
    w = world()
    owner = await signed_up(w)
    me = w.store.users[owner.user_id]
    with pytest.raises(errors.FailedPrecondition) as caught:
        await w.admin.update_user(
            owner, user_id=me.id, etag=me.etag, paths=["roles"], changes=UserChanges(roles=(ROLE_MEMBER,))
        )
    assert caught.value.reason == "LAST_OWNER" and w.store.users[me.id] == me
    second = await w.admin.create_user(
        owner, username="two", password=PASSWORD, display_name="", roles=[ROLE_OWNER], request_id=""
    )
    changed = await w.admin.update_user(
        owner, user_id=second.id, etag=second.etag, paths=["roles"], changes=UserChanges(roles=(ROLE_ADMIN,))
    )
    assert changed.roles == (ROLE_ADMIN,) and second.id in w.revocations.valid_after
    with pytest.raises(errors.Aborted):
        await w.admin.update_user(
            owner, user_id=second.id, etag=second.etag, paths=["display_name"], changes=UserChanges()
        )


async def test_the_tier_is_the_operators():
    w = world()
    owner = await signed_up(w)
    with pytest.raises(errors.PermissionDenied) as caught:
        await w.admin.update_tenant(owner, etag="", paths=["tier"], display_name="")
    assert caught.value.reason == "OPERATOR_REQUIRED"
    with pytest.raises(errors.PermissionDenied):
        await w.operator.set_tier(owner, name="acme", tier="enterprise")
    assert (
        await w.operator.set_tier(operator_principal("me"), name="acme", tier="enterprise")
    ).tier == "enterprise"


async def test_list_users_walks_every_user_once_by_username():
    w = world()
    owner = await signed_up(w)
    for name in ("c", "a", "d", "b"):
        await w.admin.create_user(
            owner, username=name, password=PASSWORD, display_name="", roles=[], request_id=""
        )
    seen, token = [], ""
    while True:
        page = await w.admin.list_users(owner, page_size=2, page_token=token, include_disabled=False)
        seen += [u.username for u in page.items]
        token = page.next_page_token
        if not token:
            break
    assert seen == ["a", "b", "boss", "c", "d"]
    first = await w.admin.list_users(owner, page_size=2, page_token="", include_disabled=False)
    with pytest.raises(errors.InvalidArgument):
        # A token is bound to its filters: not valid for the listing with disabled users.
        await w.admin.list_users(owner, page_size=2, page_token=first.next_page_token, include_disabled=True)
