"""The tier and the roles no tenant may give itself, and the operator who sets the tier.

Tenant side over gRPC (a served identity); operator side through services.identity.operator on the
same database, as `agentmesh admin` does (tests/test_admin_cli.py runs the CLI itself).
"""

from __future__ import annotations

import dataclasses
import time

import grpc
import pytest

from agentmesh.identity.v1 import identity_service_pb2 as pb
from agentmesh.identity.v1 import identity_service_pb2_grpc as pb_grpc
from services.identity.operator import Operator, operator_principal
from services.identity.passwords import Passwords
from services.identity.redis_state import Revocations
from services.identity.store import IdentityStore
from services.platform import errors
from services.platform.auth import ROLE_OWNER, Principal
from services.platform.runtime import Runtime
from tests.helpers import expect_status
from tests.identity.conftest import PASSWORD
from tests.identity.test_admin import mask


@pytest.fixture
def operator(runtime: Runtime) -> Operator:
    return Operator(
        store=IdentityStore(runtime.engine),
        passwords=Passwords(),
        revocations=Revocations(runtime.redis, access_ttl=900),
        clock=time.time,
    )


async def test_no_tenant_role_may_set_the_tier(identity):
    owner = await identity.sign_up()
    admin = await identity.add_user(owner, "admin1", pb.ROLE_ADMIN)
    for who in (owner, admin):
        for paths in (["tier"], ["display_name", "tier"]):
            error = await expect_status(
                identity.stub.UpdateTenant(
                    pb.UpdateTenantRequest(
                        tenant=pb.Tenant(tier=pb.TIER_ENTERPRISE, display_name="Big"),
                        update_mask=mask(*paths),
                    ),
                    metadata=who.md,
                )
            )
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED, paths
            assert errors.from_rpc_error(error).reason == "OPERATOR_REQUIRED"
    tenant = (await identity.stub.GetTenant(pb.GetTenantRequest(), metadata=owner.md)).tenant
    assert (tenant.tier, tenant.display_name, tenant.etag) == (
        pb.TIER_FREE,
        owner.tenant.name,
        owner.tenant.etag,
    )
    # `*` replaces what the tenant may set; a tier riding along in the body is ignored.
    replaced = (
        await identity.stub.UpdateTenant(
            pb.UpdateTenantRequest(
                tenant=pb.Tenant(tier=pb.TIER_ENTERPRISE, display_name="Big", id="x", name="renamed"),
                update_mask=mask("*"),
            ),
            metadata=owner.md,
        )
    ).tenant
    assert (replaced.tier, replaced.display_name, replaced.name, replaced.id) == (
        pb.TIER_FREE,
        "Big",
        owner.tenant.name,
        owner.tenant.id,
    )
    again = await identity.login(owner.tenant.name, "owner", PASSWORD)
    assert (await identity.stub.WhoAmI(pb.WhoAmIRequest(), metadata=again.md)).tier == pb.TIER_FREE


@pytest.mark.parametrize("role", [pb.ROLE_OPERATOR, pb.ROLE_SERVICE])
async def test_operator_and_service_roles_are_never_granted(identity, role):
    owner = await identity.sign_up()
    member = await identity.add_user(owner, "member1")
    before = (await identity.stub.ListUsers(pb.ListUsersRequest(), metadata=owner.md)).users
    calls = [
        identity.stub.CreateUser(
            pb.CreateUserRequest(username="sneaky", password=PASSWORD, roles=[role]), metadata=owner.md
        ),
        identity.stub.CreateUser(
            pb.CreateUserRequest(username="sneaky", password=PASSWORD, roles=[pb.ROLE_OWNER, role]),
            metadata=owner.md,
        ),
        identity.stub.UpdateUser(
            pb.UpdateUserRequest(user=pb.User(id=member.user.id, roles=[role]), update_mask=mask("roles")),
            metadata=owner.md,
        ),
        identity.stub.UpdateUser(
            pb.UpdateUserRequest(
                user=pb.User(id=owner.user.id, roles=[pb.ROLE_OWNER, role]), update_mask=mask("*")
            ),
            metadata=owner.md,
        ),
    ]
    for call in calls:
        error = await expect_status(call)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert errors.from_rpc_error(error).reason == "ROLE_NOT_GRANTABLE"
    after = (await identity.stub.ListUsers(pb.ListUsersRequest(), metadata=owner.md)).users
    assert after == before


async def test_member_cannot_make_itself_owner(identity):
    owner = await identity.sign_up()
    member = await identity.add_user(owner, "member1")
    error = await expect_status(
        identity.stub.UpdateUser(
            pb.UpdateUserRequest(
                user=pb.User(id=member.user.id, roles=[pb.ROLE_OWNER]), update_mask=mask("roles")
            ),
            metadata=member.md,
        )
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    me = await identity.stub.WhoAmI(pb.WhoAmIRequest(), metadata=member.md)
    assert list(me.user.roles) == [pb.ROLE_MEMBER]


async def test_operator_sets_the_tier_and_new_tokens_carry_it(identity, operator):
    owner = await identity.sign_up()
    old = owner.tokens
    tenant = await operator.set_tier(operator_principal("test"), name=owner.tenant.name, tier="enterprise")
    assert tenant.tier == "enterprise"
    refreshed = (
        await identity.stub.RefreshToken(pb.RefreshTokenRequest(refresh_token=old.refresh_token))
    ).tokens
    md = (("authorization", f"Bearer {refreshed.access_token}"),)
    assert (await identity.stub.WhoAmI(pb.WhoAmIRequest(), metadata=md)).tier == pb.TIER_ENTERPRISE
    again = await identity.login(owner.tenant.name, "owner", PASSWORD)
    assert (await identity.stub.WhoAmI(pb.WhoAmIRequest(), metadata=again.md)).tier == pb.TIER_ENTERPRISE


async def test_operator_creates_tenants_and_resets_passwords(identity, operator):
    me = operator_principal("test")
    name = f"op-{time.time_ns()}"
    tenant, user = await operator.create_tenant(me, name=name, tier="pro", owner="boss", password=PASSWORD)
    assert (tenant.tier, user.roles) == ("pro", (ROLE_OWNER,))
    signed_in = await identity.login(name, "boss", PASSWORD)
    assert signed_in.tenant.tier == pb.TIER_PRO
    with pytest.raises(errors.AlreadyExists):
        await operator.create_tenant(me, name=name, tier="free", owner="x", password=PASSWORD)
    await operator.reset_password(me, tenant=name, username="boss", password="a new long secret")
    # The old password and every session of the user are gone.
    assert (
        await expect_status(identity.login(name, "boss", PASSWORD))
    ).code() == grpc.StatusCode.UNAUTHENTICATED
    stale = await expect_status(identity.stub.WhoAmI(pb.WhoAmIRequest(), metadata=signed_in.md))
    assert stale.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (await identity.login(name, "boss", "a new long secret")).user.username == "boss"
    assert name in [t.name for t in await operator.list_tenants(me)]


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda op, me: op.set_tier(me, name="no-such-tenant", tier="pro"), errors.NotFound),
        (lambda op, me: op.set_tier(me, name="demo", tier="platinum"), errors.InvalidArgument),
        (
            lambda op, me: op.create_tenant(me, name="Bad", tier="pro", owner="o", password=PASSWORD),
            errors.InvalidArgument,
        ),
        (
            lambda op, me: op.reset_password(me, tenant="no-such-tenant", username="o", password=PASSWORD),
            errors.NotFound,
        ),
    ],
)
async def test_operator_bad_input(operator, call, error):
    with pytest.raises(error):
        await call(operator, operator_principal("test"))


async def test_operator_methods_need_the_operator_role(operator):
    owner = Principal(user_id="u", tenant_id="t", roles=frozenset({ROLE_OWNER}), tier="enterprise")
    for call in (
        operator.list_tenants(owner),
        operator.set_tier(owner, name="demo", tier="enterprise"),
        operator.create_tenant(owner, name="mine", tier="enterprise", owner="o", password=PASSWORD),
        operator.reset_password(owner, tenant="demo", username="user_1", password=PASSWORD),
    ):
        with pytest.raises(errors.PermissionDenied):
            await call


async def test_sign_up_closed(serve, runtime):
    # Production default: AGENTMESH_SIGNUP unset outside the embedded mode.
    runtime.settings = dataclasses.replace(
        runtime.settings, auth=dataclasses.replace(runtime.settings.auth, signup_open=None)
    )
    running = await serve("identity")
    stub = pb_grpc.IdentityServiceStub(running.channel)
    error = await expect_status(
        stub.SignUp(pb.SignUpRequest(tenant_name="closed-door", username="o", password=PASSWORD))
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert errors.from_rpc_error(error).reason == "SIGNUP_CLOSED"
    assert "operator" in error.details()
    login = stub.Login(pb.LoginRequest(tenant="closed-door", username="o", password=PASSWORD))
    assert (await expect_status(login)).code() == grpc.StatusCode.UNAUTHENTICATED
