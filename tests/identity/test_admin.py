"""Tenant administration: roles, tenancy, etags, field masks, pagination, idempotency, bad input."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2

from agentmesh.identity.v1 import identity_service_pb2 as pb
from tests.helpers import expect_status
from tests.identity.conftest import PASSWORD, field_violations


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


def admin_calls(user_id: str):
    return {
        "CreateUser": pb.CreateUserRequest(username="newbie", password=PASSWORD),
        "GetUser": pb.GetUserRequest(user_id=user_id),
        "ListUsers": pb.ListUsersRequest(),
        "UpdateUser": pb.UpdateUserRequest(
            user=pb.User(id=user_id, display_name="x"), update_mask=mask("display_name")
        ),
        "DeleteUser": pb.DeleteUserRequest(user_id=user_id),
        "GetTenant": pb.GetTenantRequest(),
        "UpdateTenant": pb.UpdateTenantRequest(
            tenant=pb.Tenant(display_name="x"), update_mask=mask("display_name")
        ),
    }


async def test_member_gets_permission_denied_on_every_admin_rpc(identity):
    owner = await identity.sign_up()
    member = await identity.add_user(owner, "member1", pb.ROLE_MEMBER)
    for method, request in admin_calls(owner.user.id).items():
        error = await expect_status(getattr(identity.stub, method)(request, metadata=member.md))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, method
    # Nothing changed, and an admin may do the same calls.
    admin = await identity.add_user(owner, "admin1", pb.ROLE_ADMIN)
    assert (
        await identity.stub.GetUser(pb.GetUserRequest(user_id=member.user.id), metadata=admin.md)
    ).user.username == "member1"
    assert (
        await identity.stub.GetTenant(pb.GetTenantRequest(), metadata=admin.md)
    ).tenant.display_name == owner.tenant.name


async def test_service_token_cannot_administer_tenants(identity):
    owner = await identity.sign_up()
    token = (
        await identity.stub.IssueServiceToken(
            pb.IssueServiceTokenRequest(service_name="orchestration", secret="test-service-secret")
        )
    ).tokens.access_token
    md = (("authorization", f"Bearer {token}"),)
    error = await expect_status(identity.stub.GetUser(pb.GetUserRequest(user_id=owner.user.id), metadata=md))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_other_tenants_users_are_not_found(identity):
    tenant_a = await identity.sign_up()
    victim = await identity.add_user(tenant_a, "victim")
    tenant_b = await identity.sign_up()
    calls = {
        "GetUser": pb.GetUserRequest(user_id=victim.user.id),
        "UpdateUser": pb.UpdateUserRequest(
            user=pb.User(id=victim.user.id, disabled=True), update_mask=mask("disabled")
        ),
        "DeleteUser": pb.DeleteUserRequest(user_id=victim.user.id),
    }
    for method, request in calls.items():
        error = await expect_status(getattr(identity.stub, method)(request, metadata=tenant_b.md))
        assert error.code() == grpc.StatusCode.NOT_FOUND, method
    listed = await identity.stub.ListUsers(pb.ListUsersRequest(), metadata=tenant_b.md)
    assert [u.username for u in listed.users] == ["owner"]
    # The victim is untouched.
    assert (await identity.stub.WhoAmI(pb.WhoAmIRequest(), metadata=victim.md)).user.disabled is False


async def test_create_user_conflicts_and_request_id(identity):
    owner = await identity.sign_up()
    request = pb.CreateUserRequest(username="dup", password=PASSWORD, request_id="req-1")
    first = (await identity.stub.CreateUser(request, metadata=owner.md)).user
    again = (await identity.stub.CreateUser(request, metadata=owner.md)).user
    assert again.id == first.id
    assert list(first.roles) == [pb.ROLE_MEMBER]
    error = await expect_status(
        identity.stub.CreateUser(pb.CreateUserRequest(username="dup", password=PASSWORD), metadata=owner.md)
    )
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    error = await expect_status(
        identity.stub.CreateUser(
            pb.CreateUserRequest(username="other", password=PASSWORD, request_id="req-1"), metadata=owner.md
        )
    )
    assert field_violations(error) == ["request_id"]
    listed = await identity.stub.ListUsers(pb.ListUsersRequest(), metadata=owner.md)
    assert sorted(u.username for u in listed.users) == ["dup", "owner"]


async def test_sign_up_conflicts_and_request_id(identity):
    request = pb.SignUpRequest(
        tenant_name="acme-retry", username="boss", password=PASSWORD, request_id="su-1"
    )
    first = await identity.stub.SignUp(request)
    again = await identity.stub.SignUp(request)
    assert (again.tenant.id, again.user.id) == (first.tenant.id, first.user.id)
    assert again.tokens.access_token
    # The same request_id with another password hands out nothing.
    error = await expect_status(
        identity.stub.SignUp(
            pb.SignUpRequest(
                tenant_name="acme-retry", username="boss", password="someone else's", request_id="su-1"
            )
        )
    )
    assert field_violations(error) == ["request_id"]
    error = await expect_status(
        identity.stub.SignUp(pb.SignUpRequest(tenant_name="acme-retry", username="x", password=PASSWORD))
    )
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (pb.SignUpRequest(tenant_name="", username="a", password=PASSWORD), ["tenant_name"]),
        (pb.SignUpRequest(tenant_name="a", username="a", password=PASSWORD), ["tenant_name"]),
        (pb.SignUpRequest(tenant_name="-bad", username="a", password=PASSWORD), ["tenant_name"]),
        (pb.SignUpRequest(tenant_name="UPPER", username="a", password=PASSWORD), ["tenant_name"]),
        (pb.SignUpRequest(tenant_name="t" * 64, username="a", password=PASSWORD), ["tenant_name"]),
        (pb.SignUpRequest(tenant_name="okname", username="", password=PASSWORD), ["username"]),
        (pb.SignUpRequest(tenant_name="okname", username="a b", password=PASSWORD), ["username"]),
        (pb.SignUpRequest(tenant_name="okname", username="u" * 65, password=PASSWORD), ["username"]),
        (
            pb.SignUpRequest(tenant_name="okname", username="a", password=PASSWORD, display_name="d" * 201),
            ["display_name"],
        ),
        (
            pb.SignUpRequest(tenant_name="okname", username="a", password=PASSWORD, request_id="r" * 129),
            ["request_id"],
        ),
        (pb.SignUpRequest(tenant_name="okname", username="a", password="1234"), ["password"]),
        (pb.SignUpRequest(tenant_name="okname", username="a", password="zzzzzzzzzz"), ["password"]),
        (pb.SignUpRequest(tenant_name="okname", username="a", password="Password123"), ["password"]),
        (pb.SignUpRequest(tenant_name="okname", username="a", password="p" * 300), ["password"]),
        (pb.SignUpRequest(tenant_name="-", username="-", password=PASSWORD), ["tenant_name", "username"]),
    ],
)
async def test_bad_sign_up_is_invalid_argument_and_stores_nothing(identity, request_, fields):
    error = await expect_status(identity.stub.SignUp(request_))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == fields
    error = await expect_status(identity.login("okname", "a", PASSWORD))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_bad_admin_input(identity):
    owner = await identity.sign_up()
    cases = [
        (identity.stub.CreateUser, pb.CreateUserRequest(username="Bad", password=PASSWORD), ["username"]),
        (
            identity.stub.CreateUser,
            pb.CreateUserRequest(username="ok", password=PASSWORD, roles=[pb.ROLE_UNSPECIFIED]),
            ["roles"],
        ),
        (identity.stub.GetUser, pb.GetUserRequest(user_id=""), ["user_id"]),
        (identity.stub.GetUser, pb.GetUserRequest(user_id="x" * 1000), ["user_id"]),
        (identity.stub.ListUsers, pb.ListUsersRequest(page_size=-1), ["page_size"]),
        (identity.stub.ListUsers, pb.ListUsersRequest(page_token="forged"), ["page_token"]),
        (identity.stub.UpdateUser, pb.UpdateUserRequest(user=pb.User(id=owner.user.id)), ["update_mask"]),
        (
            identity.stub.UpdateUser,
            pb.UpdateUserRequest(user=pb.User(id=owner.user.id), update_mask=mask("password")),
            ["update_mask"],
        ),
        (
            identity.stub.UpdateUser,
            pb.UpdateUserRequest(user=pb.User(id=owner.user.id), update_mask=mask("roles")),
            ["user.roles"],
        ),
        (
            identity.stub.UpdateUser,
            pb.UpdateUserRequest(
                user=pb.User(id=owner.user.id, display_name="\x00"), update_mask=mask("display_name")
            ),
            ["user.display_name"],
        ),
        (
            identity.stub.UpdateTenant,
            pb.UpdateTenantRequest(tenant=pb.Tenant(), update_mask=mask("name")),
            ["update_mask"],
        ),
        (
            identity.stub.UpdateTenant,
            pb.UpdateTenantRequest(
                tenant=pb.Tenant(display_name="d" * 201), update_mask=mask("display_name")
            ),
            ["tenant.display_name"],
        ),
    ]
    for method, request, fields in cases:
        error = await expect_status(method(request, metadata=owner.md))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        assert field_violations(error) == fields, request
    listed = await identity.stub.ListUsers(pb.ListUsersRequest(), metadata=owner.md)
    assert [(u.username, u.display_name, list(u.roles)) for u in listed.users] == [
        ("owner", "Owner", [pb.ROLE_OWNER])
    ]
    tenant = (await identity.stub.GetTenant(pb.GetTenantRequest(), metadata=owner.md)).tenant
    assert (tenant.tier, tenant.etag) == (pb.TIER_FREE, owner.tenant.etag)


async def test_list_users_pages_with_tokens(identity):
    owner = await identity.sign_up()
    for i in range(4):
        await identity.stub.CreateUser(
            pb.CreateUserRequest(username=f"u{i}", password=PASSWORD), metadata=owner.md
        )
    seen, token = [], ""
    while True:
        page = await identity.stub.ListUsers(
            pb.ListUsersRequest(page_size=2, page_token=token), metadata=owner.md
        )
        seen.append([u.username for u in page.users])
        token = page.next_page_token
        if not token:
            break
    assert seen == [["owner", "u0"], ["u1", "u2"], ["u3"]]
    # A token is bound to its listing: another filter (or tenant) refuses it.
    first = await identity.stub.ListUsers(pb.ListUsersRequest(page_size=2), metadata=owner.md)
    error = await expect_status(
        identity.stub.ListUsers(
            pb.ListUsersRequest(page_size=2, page_token=first.next_page_token, include_disabled=True),
            metadata=owner.md,
        )
    )
    assert field_violations(error) == ["page_token"]


async def test_update_user_etag_and_mask(identity):
    owner = await identity.sign_up()
    member = await identity.add_user(owner, "member1")
    user = member.user
    updated = (
        await identity.stub.UpdateUser(
            pb.UpdateUserRequest(
                user=pb.User(id=user.id, etag=user.etag, display_name="Renamed", disabled=True),
                update_mask=mask("display_name"),
            ),
            metadata=owner.md,
        )
    ).user
    assert (updated.display_name, updated.disabled) == ("Renamed", False)
    assert updated.etag != user.etag
    error = await expect_status(
        identity.stub.UpdateUser(
            pb.UpdateUserRequest(
                user=pb.User(id=user.id, etag=user.etag, display_name="Stale"),
                update_mask=mask("display_name"),
            ),
            metadata=owner.md,
        )
    )
    assert error.code() == grpc.StatusCode.ABORTED
    error = await expect_status(
        identity.stub.DeleteUser(pb.DeleteUserRequest(user_id=user.id, etag=user.etag), metadata=owner.md)
    )
    assert error.code() == grpc.StatusCode.ABORTED
    current = (await identity.stub.GetUser(pb.GetUserRequest(user_id=user.id), metadata=owner.md)).user
    assert current.display_name == "Renamed"
    # "*" replaces every field.
    replaced = (
        await identity.stub.UpdateUser(
            pb.UpdateUserRequest(
                user=pb.User(id=user.id, display_name="All", roles=[pb.ROLE_ADMIN]), update_mask=mask("*")
            ),
            metadata=owner.md,
        )
    ).user
    assert (replaced.display_name, list(replaced.roles), replaced.disabled) == ("All", [pb.ROLE_ADMIN], False)


async def test_role_change_voids_old_access_tokens_and_refresh_carries_new_roles(identity):
    owner = await identity.sign_up()
    admin = await identity.add_user(owner, "admin1", pb.ROLE_ADMIN)
    await identity.stub.UpdateUser(
        pb.UpdateUserRequest(
            user=pb.User(id=admin.user.id, roles=[pb.ROLE_MEMBER]), update_mask=mask("roles")
        ),
        metadata=owner.md,
    )
    error = await expect_status(identity.stub.ListUsers(pb.ListUsersRequest(), metadata=admin.md))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    fresh = (
        await identity.stub.RefreshToken(pb.RefreshTokenRequest(refresh_token=admin.tokens.refresh_token))
    ).tokens
    md = (("authorization", f"Bearer {fresh.access_token}"),)
    assert list((await identity.stub.WhoAmI(pb.WhoAmIRequest(), metadata=md)).roles) == [pb.ROLE_MEMBER]
    error = await expect_status(identity.stub.ListUsers(pb.ListUsersRequest(), metadata=md))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_owner_rules(identity):
    owner = await identity.sign_up()
    admin = await identity.add_user(owner, "admin1", pb.ROLE_ADMIN)
    member = await identity.add_user(owner, "member1")
    denied = [
        identity.stub.CreateUser(
            pb.CreateUserRequest(username="o2", password=PASSWORD, roles=[pb.ROLE_OWNER]), metadata=admin.md
        ),
        identity.stub.UpdateUser(
            pb.UpdateUserRequest(
                user=pb.User(id=member.user.id, roles=[pb.ROLE_OWNER]), update_mask=mask("roles")
            ),
            metadata=admin.md,
        ),
        identity.stub.UpdateUser(
            pb.UpdateUserRequest(
                user=pb.User(id=owner.user.id, roles=[pb.ROLE_MEMBER]), update_mask=mask("roles")
            ),
            metadata=admin.md,
        ),
        identity.stub.UpdateUser(
            pb.UpdateUserRequest(user=pb.User(id=owner.user.id, disabled=True), update_mask=mask("disabled")),
            metadata=admin.md,
        ),
        identity.stub.DeleteUser(pb.DeleteUserRequest(user_id=owner.user.id), metadata=admin.md),
        identity.stub.UpdateTenant(
            pb.UpdateTenantRequest(tenant=pb.Tenant(tier=pb.TIER_PRO), update_mask=mask("tier")),
            metadata=admin.md,
        ),
    ]
    for call in denied:
        assert (await expect_status(call)).code() == grpc.StatusCode.PERMISSION_DENIED
    # The last active owner cannot demote, disable or delete themselves.
    for call in (
        identity.stub.UpdateUser(
            pb.UpdateUserRequest(
                user=pb.User(id=owner.user.id, roles=[pb.ROLE_ADMIN]), update_mask=mask("roles")
            ),
            metadata=owner.md,
        ),
        identity.stub.DeleteUser(pb.DeleteUserRequest(user_id=owner.user.id), metadata=owner.md),
    ):
        assert (await expect_status(call)).code() == grpc.StatusCode.FAILED_PRECONDITION
    # An owner may grant owner; the admin may rename the tenant.
    await identity.stub.UpdateUser(
        pb.UpdateUserRequest(
            user=pb.User(id=member.user.id, roles=[pb.ROLE_OWNER]), update_mask=mask("roles")
        ),
        metadata=owner.md,
    )
    renamed = (
        await identity.stub.UpdateTenant(
            pb.UpdateTenantRequest(tenant=pb.Tenant(display_name="Acme"), update_mask=mask("display_name")),
            metadata=admin.md,
        )
    ).tenant
    assert (renamed.display_name, renamed.tier) == ("Acme", pb.TIER_FREE)
    error = await expect_status(
        identity.stub.UpdateTenant(
            pb.UpdateTenantRequest(
                tenant=pb.Tenant(display_name="Old", etag=owner.tenant.etag), update_mask=mask("display_name")
            ),
            metadata=owner.md,
        )
    )
    assert error.code() == grpc.StatusCode.ABORTED


async def test_service_token(identity, signer):
    error = await expect_status(
        identity.stub.IssueServiceToken(
            pb.IssueServiceTokenRequest(service_name="orchestration", secret="wrong")
        )
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    error = await expect_status(
        identity.stub.IssueServiceToken(
            pb.IssueServiceTokenRequest(service_name="Bad Name", secret="test-service-secret")
        )
    )
    assert field_violations(error) == ["service_name"]
    tokens = (
        await identity.stub.IssueServiceToken(
            pb.IssueServiceTokenRequest(service_name="orchestration", secret="test-service-secret")
        )
    ).tokens
    assert tokens.refresh_token == ""
    import jwt

    claims = jwt.decode(
        tokens.access_token, signer.signing_key.public_key(), algorithms=["EdDSA"], audience="agentmesh"
    )
    assert (claims["sub"], claims["tenant"], claims["roles"], claims["tier"], claims["typ"]) == (
        "service:orchestration",
        "*",
        ["service"],
        "enterprise",
        "access",
    )
    me = await identity.stub.WhoAmI(
        pb.WhoAmIRequest(), metadata=(("authorization", f"Bearer {tokens.access_token}"),)
    )
    assert (list(me.roles), me.tier, me.HasField("user")) == ([pb.ROLE_SERVICE], pb.TIER_ENTERPRISE, False)
