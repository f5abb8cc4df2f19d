"""agentmesh.identity.v1.IdentityService over gRPC: protobuf in and out, nothing else."""

from __future__ import annotations

import grpc

from agentmesh.identity.v1 import identity_service_pb2 as pb
from agentmesh.identity.v1 import identity_service_pb2_grpc as pb_grpc
from services.identity import convert
from services.identity.admin import TenantAdmin
from services.identity.service import IdentityService
from services.platform.auth import principal
from services.platform.call_context import current_call

# Callable without an access token: how a caller gets one, and the keys to verify it with.
PUBLIC_RPCS = ("SignUp", "Login", "RefreshToken", "Logout", "GetJwks", "IssueServiceToken")


class IdentityServicer(pb_grpc.IdentityServiceServicer):
    def __init__(self, *, service: IdentityService, admin: TenantAdmin) -> None:
        self._service = service
        self._admin = admin

    async def SignUp(
        self,
        request: pb.SignUpRequest,
        context: grpc.aio.ServicerContext[pb.SignUpRequest, pb.SignUpResponse],
    ) -> pb.SignUpResponse:
        signed_in = await self._service.sign_up(
            tenant_name=request.tenant_name,
            username=request.username,
            password=request.password,
            display_name=request.display_name,
            request_id=request.request_id,
        )
        return pb.SignUpResponse(
            tenant=convert.tenant_pb(signed_in.tenant),
            user=convert.user_pb(signed_in.user),
            tokens=convert.tokens_pb(signed_in.session),
        )

    async def Login(
        self, request: pb.LoginRequest, context: grpc.aio.ServicerContext[pb.LoginRequest, pb.LoginResponse]
    ) -> pb.LoginResponse:
        signed_in = await self._service.login(
            tenant=request.tenant,
            username=request.username,
            password=request.password,
            client_address=context.peer() or "",
        )
        return pb.LoginResponse(
            tokens=convert.tokens_pb(signed_in.session),
            user=convert.user_pb(signed_in.user),
            tenant=convert.tenant_pb(signed_in.tenant),
        )

    async def RefreshToken(
        self,
        request: pb.RefreshTokenRequest,
        context: grpc.aio.ServicerContext[pb.RefreshTokenRequest, pb.RefreshTokenResponse],
    ) -> pb.RefreshTokenResponse:
        session = await self._service.refresh(refresh_token=request.refresh_token)
        return pb.RefreshTokenResponse(tokens=convert.tokens_pb(session))

    async def Logout(
        self,
        request: pb.LogoutRequest,
        context: grpc.aio.ServicerContext[pb.LogoutRequest, pb.LogoutResponse],
    ) -> pb.LogoutResponse:
        # Public: the caller may come with a refresh token only, so no principal is required.
        call = current_call.get()
        await self._service.logout(
            refresh_token=request.refresh_token, principal=call.principal if call is not None else None
        )
        return pb.LogoutResponse()

    async def GetJwks(
        self,
        request: pb.GetJwksRequest,
        context: grpc.aio.ServicerContext[pb.GetJwksRequest, pb.GetJwksResponse],
    ) -> pb.GetJwksResponse:
        return pb.GetJwksResponse(keys=convert.jwks_pb(self._service.jwks()))

    async def WhoAmI(
        self,
        request: pb.WhoAmIRequest,
        context: grpc.aio.ServicerContext[pb.WhoAmIRequest, pb.WhoAmIResponse],
    ) -> pb.WhoAmIResponse:
        return convert.who_am_i_pb(await self._service.who_am_i(principal()))

    async def ChangePassword(
        self,
        request: pb.ChangePasswordRequest,
        context: grpc.aio.ServicerContext[pb.ChangePasswordRequest, pb.ChangePasswordResponse],
    ) -> pb.ChangePasswordResponse:
        session = await self._service.change_password(
            principal(), old_password=request.old_password, new_password=request.new_password
        )
        return pb.ChangePasswordResponse(tokens=convert.tokens_pb(session))

    async def IssueServiceToken(
        self,
        request: pb.IssueServiceTokenRequest,
        context: grpc.aio.ServicerContext[pb.IssueServiceTokenRequest, pb.IssueServiceTokenResponse],
    ) -> pb.IssueServiceTokenResponse:
        session = await self._service.issue_service_token(
            service_name=request.service_name, secret=request.secret
        )
        return pb.IssueServiceTokenResponse(tokens=convert.tokens_pb(session))

    async def CreateUser(
        self,
        request: pb.CreateUserRequest,
        context: grpc.aio.ServicerContext[pb.CreateUserRequest, pb.CreateUserResponse],
    ) -> pb.CreateUserResponse:
        user = await self._admin.create_user(
            principal(),
            username=request.username,
            password=request.password,
            display_name=request.display_name,
            roles=convert.role_names(request.roles),
            request_id=request.request_id,
        )
        return pb.CreateUserResponse(user=convert.user_pb(user))

    async def GetUser(
        self,
        request: pb.GetUserRequest,
        context: grpc.aio.ServicerContext[pb.GetUserRequest, pb.GetUserResponse],
    ) -> pb.GetUserResponse:
        user = await self._admin.get_user(principal(), request.user_id)
        return pb.GetUserResponse(user=convert.user_pb(user))

    async def ListUsers(
        self,
        request: pb.ListUsersRequest,
        context: grpc.aio.ServicerContext[pb.ListUsersRequest, pb.ListUsersResponse],
    ) -> pb.ListUsersResponse:
        page = await self._admin.list_users(
            principal(),
            page_size=request.page_size,
            page_token=request.page_token,
            include_disabled=request.include_disabled,
        )
        return pb.ListUsersResponse(
            users=[convert.user_pb(u) for u in page.items], next_page_token=page.next_page_token
        )

    async def UpdateUser(
        self,
        request: pb.UpdateUserRequest,
        context: grpc.aio.ServicerContext[pb.UpdateUserRequest, pb.UpdateUserResponse],
    ) -> pb.UpdateUserResponse:
        user = await self._admin.update_user(
            principal(),
            user_id=request.user.id,
            etag=request.user.etag,
            paths=list(request.update_mask.paths),
            changes=convert.user_changes(request.user),
        )
        return pb.UpdateUserResponse(user=convert.user_pb(user))

    async def DeleteUser(
        self,
        request: pb.DeleteUserRequest,
        context: grpc.aio.ServicerContext[pb.DeleteUserRequest, pb.DeleteUserResponse],
    ) -> pb.DeleteUserResponse:
        await self._admin.delete_user(principal(), user_id=request.user_id, etag=request.etag)
        return pb.DeleteUserResponse()

    async def GetTenant(
        self,
        request: pb.GetTenantRequest,
        context: grpc.aio.ServicerContext[pb.GetTenantRequest, pb.GetTenantResponse],
    ) -> pb.GetTenantResponse:
        return pb.GetTenantResponse(tenant=convert.tenant_pb(await self._admin.get_tenant(principal())))

    async def UpdateTenant(
        self,
        request: pb.UpdateTenantRequest,
        context: grpc.aio.ServicerContext[pb.UpdateTenantRequest, pb.UpdateTenantResponse],
    ) -> pb.UpdateTenantResponse:
        tenant = await self._admin.update_tenant(
            principal(),
            etag=request.tenant.etag,
            paths=list(request.update_mask.paths),
            display_name=request.tenant.display_name,
        )
        return pb.UpdateTenantResponse(tenant=convert.tenant_pb(tenant))
