"""agentmesh.identity.v1.IdentityService over gRPC: protobuf in and out, nothing else."""

from __future__ import annotations

import datetime

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from agentmesh.identity.v1 import identity_service_pb2 as pb
from agentmesh.identity.v1 import identity_service_pb2_grpc as pb_grpc
from services.identity.admin import TenantAdmin, UserChanges
from services.identity.models import Session, Tenant, User
from services.identity.service import IdentityService
from services.platform import auth, middleware

ROLE_TO_PB = {
    auth.ROLE_OWNER: pb.ROLE_OWNER,
    auth.ROLE_ADMIN: pb.ROLE_ADMIN,
    auth.ROLE_MEMBER: pb.ROLE_MEMBER,
    auth.ROLE_SERVICE: pb.ROLE_SERVICE,
    auth.ROLE_OPERATOR: pb.ROLE_OPERATOR,
}
PB_TO_ROLE = {v: k for k, v in ROLE_TO_PB.items()}
TIER_TO_PB = {"free": pb.TIER_FREE, "pro": pb.TIER_PRO, "enterprise": pb.TIER_ENTERPRISE}


def _timestamp(value: datetime.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _duration(seconds: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=seconds)


def tenant_pb(tenant: Tenant) -> pb.Tenant:
    return pb.Tenant(
        id=tenant.id,
        name=tenant.name,
        display_name=tenant.display_name,
        tier=TIER_TO_PB.get(tenant.tier, pb.TIER_UNSPECIFIED),
        etag=tenant.etag,
        create_time=_timestamp(tenant.create_time),
        update_time=_timestamp(tenant.update_time),
    )


def user_pb(user: User) -> pb.User:
    return pb.User(
        id=user.id,
        tenant_id=user.tenant_id,
        username=user.username,
        display_name=user.display_name,
        roles=[ROLE_TO_PB[r] for r in user.roles if r in ROLE_TO_PB],
        disabled=user.disabled,
        etag=user.etag,
        create_time=_timestamp(user.create_time),
        update_time=_timestamp(user.update_time),
    )


def tokens_pb(session: Session) -> pb.AuthTokens:
    return pb.AuthTokens(
        access_token=session.access_token,
        refresh_token=session.refresh_token,
        token_type="Bearer",
        access_token_lifetime=_duration(session.access_ttl),
        refresh_token_lifetime=_duration(session.refresh_ttl),
    )


def _role_names(roles) -> list[str]:  # type: ignore[no-untyped-def]
    # An unknown enum value maps to a name the service rejects with a field violation.
    return [PB_TO_ROLE.get(r, f"role {r}") for r in roles]


class IdentityServicer(pb_grpc.IdentityServiceServicer):
    def __init__(self, *, service: IdentityService, admin: TenantAdmin):
        self._service = service
        self._admin = admin

    async def SignUp(self, request: pb.SignUpRequest, context: grpc.aio.ServicerContext) -> pb.SignUpResponse:
        signed_in = await self._service.sign_up(
            tenant_name=request.tenant_name,
            username=request.username,
            password=request.password,
            display_name=request.display_name,
            request_id=request.request_id,
        )
        return pb.SignUpResponse(
            tenant=tenant_pb(signed_in.tenant),
            user=user_pb(signed_in.user),
            tokens=tokens_pb(signed_in.session),
        )

    async def Login(self, request: pb.LoginRequest, context: grpc.aio.ServicerContext) -> pb.LoginResponse:
        signed_in = await self._service.login(
            tenant=request.tenant,
            username=request.username,
            password=request.password,
            client_address=context.peer() or "",
        )
        return pb.LoginResponse(
            tokens=tokens_pb(signed_in.session),
            user=user_pb(signed_in.user),
            tenant=tenant_pb(signed_in.tenant),
        )

    async def RefreshToken(self, request: pb.RefreshTokenRequest, context) -> pb.RefreshTokenResponse:  # type: ignore[no-untyped-def]
        session = await self._service.refresh(refresh_token=request.refresh_token)
        return pb.RefreshTokenResponse(tokens=tokens_pb(session))

    async def Logout(self, request: pb.LogoutRequest, context) -> pb.LogoutResponse:  # type: ignore[no-untyped-def]
        call = middleware.current_call.get()
        await self._service.logout(
            refresh_token=request.refresh_token, principal=call.principal if call is not None else None
        )
        return pb.LogoutResponse()

    async def GetJwks(self, request: pb.GetJwksRequest, context) -> pb.GetJwksResponse:  # type: ignore[no-untyped-def]
        return pb.GetJwksResponse(keys=[pb.JsonWebKey(**key) for key in self._service.jwks()["keys"]])

    async def WhoAmI(self, request: pb.WhoAmIRequest, context) -> pb.WhoAmIResponse:  # type: ignore[no-untyped-def]
        found = await self._service.who_am_i(middleware.principal())
        return pb.WhoAmIResponse(
            user=user_pb(found.user) if found.user else None,
            tenant=tenant_pb(found.tenant) if found.tenant else None,
            roles=[ROLE_TO_PB[r] for r in found.roles if r in ROLE_TO_PB],
            tier=TIER_TO_PB.get(found.tier, pb.TIER_UNSPECIFIED),
        )

    async def ChangePassword(self, request: pb.ChangePasswordRequest, context) -> pb.ChangePasswordResponse:  # type: ignore[no-untyped-def]
        session = await self._service.change_password(
            middleware.principal(), old_password=request.old_password, new_password=request.new_password
        )
        return pb.ChangePasswordResponse(tokens=tokens_pb(session))

    async def IssueServiceToken(
        self, request: pb.IssueServiceTokenRequest, context
    ) -> pb.IssueServiceTokenResponse:  # type: ignore[no-untyped-def]
        session = await self._service.issue_service_token(
            service_name=request.service_name, secret=request.secret
        )
        return pb.IssueServiceTokenResponse(tokens=tokens_pb(session))

    async def CreateUser(self, request: pb.CreateUserRequest, context) -> pb.CreateUserResponse:  # type: ignore[no-untyped-def]
        user = await self._admin.create_user(
            middleware.principal(),
            username=request.username,
            password=request.password,
            display_name=request.display_name,
            roles=_role_names(request.roles),
            request_id=request.request_id,
        )
        return pb.CreateUserResponse(user=user_pb(user))

    async def GetUser(self, request: pb.GetUserRequest, context) -> pb.GetUserResponse:  # type: ignore[no-untyped-def]
        return pb.GetUserResponse(
            user=user_pb(await self._admin.get_user(middleware.principal(), request.user_id))
        )

    async def ListUsers(self, request: pb.ListUsersRequest, context) -> pb.ListUsersResponse:  # type: ignore[no-untyped-def]
        users, next_token = await self._admin.list_users(
            middleware.principal(),
            page_size_=request.page_size,
            page_token=request.page_token,
            include_disabled=request.include_disabled,
        )
        return pb.ListUsersResponse(users=[user_pb(u) for u in users], next_page_token=next_token)

    async def UpdateUser(self, request: pb.UpdateUserRequest, context) -> pb.UpdateUserResponse:  # type: ignore[no-untyped-def]
        user = await self._admin.update_user(
            middleware.principal(),
            user_id=request.user.id,
            etag=request.user.etag,
            paths=list(request.update_mask.paths),
            changes=UserChanges(
                display_name=request.user.display_name,
                roles=tuple(_role_names(request.user.roles)),
                disabled=request.user.disabled,
            ),
        )
        return pb.UpdateUserResponse(user=user_pb(user))

    async def DeleteUser(self, request: pb.DeleteUserRequest, context) -> pb.DeleteUserResponse:  # type: ignore[no-untyped-def]
        await self._admin.delete_user(middleware.principal(), user_id=request.user_id, etag=request.etag)
        return pb.DeleteUserResponse()

    async def GetTenant(self, request: pb.GetTenantRequest, context) -> pb.GetTenantResponse:  # type: ignore[no-untyped-def]
        return pb.GetTenantResponse(tenant=tenant_pb(await self._admin.get_tenant(middleware.principal())))

    async def UpdateTenant(self, request: pb.UpdateTenantRequest, context) -> pb.UpdateTenantResponse:  # type: ignore[no-untyped-def]
        tenant = await self._admin.update_tenant(
            middleware.principal(),
            etag=request.tenant.etag,
            paths=list(request.update_mask.paths),
            display_name=request.tenant.display_name,
        )
        return pb.UpdateTenantResponse(tenant=tenant_pb(tenant))
