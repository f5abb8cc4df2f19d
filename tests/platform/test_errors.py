"""A domain error raised in a service reaches a real client as its status with details; an
unexpected exception reaches it as INTERNAL with nothing of its internals."""

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from agentmesh.identity.v1 import identity_service_pb2 as pb
from agentmesh.identity.v1 import identity_service_pb2_grpc as pb_grpc
from services.platform import errors
from tests.helpers import bearer
from tests.platform.servicers import probe_identity


def details_of(err: grpc.aio.AioRpcError) -> dict[str, object]:
    status = rpc_status.from_call(err)
    assert status is not None, "no google.rpc.Status in the trailers"
    found: dict[str, object] = {}
    for detail in status.details:
        for cls in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.RetryInfo):
            if detail.Is(cls.DESCRIPTOR):
                message = cls()
                detail.Unpack(message)
                found[cls.__name__] = message
    return found


async def test_invalid_argument_carries_error_info_and_field_violations(serve):
    running = await serve(probe_identity())
    stub = pb_grpc.IdentityServiceStub(running.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetJwks(pb.GetJwksRequest())
    err = caught.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "two fields are wrong"
    found = details_of(err)
    assert found["ErrorInfo"].reason == "BAD_SIGNUP"
    assert found["ErrorInfo"].domain == "agentmesh"
    assert [(v.field, v.description) for v in found["BadRequest"].field_violations] == [
        ("username", "must not be empty"),
        ("password", "is too short"),
    ]
    # The client side turns it back into the same typed exception.
    again = errors.from_rpc_error(err)
    assert isinstance(again, errors.InvalidArgument)
    assert again.reason == "BAD_SIGNUP"
    assert [v.field for v in again.violations] == ["username", "password"]


async def test_resource_exhausted_carries_retry_info(serve, keys):
    running = await serve(probe_identity())
    stub = pb_grpc.IdentityServiceStub(running.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListUsers(pb.ListUsersRequest(), metadata=bearer(keys.token()))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert details_of(caught.value)["RetryInfo"].retry_delay.ToNanoseconds() == 3_500_000_000
    again = errors.from_rpc_error(caught.value)
    assert isinstance(again, errors.ResourceExhausted) and again.retry_after == 3.5


async def test_not_found_maps_to_not_found(serve, keys):
    running = await serve(probe_identity())
    stub = pb_grpc.IdentityServiceStub(running.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetUser(pb.GetUserRequest(user_id="u"), metadata=bearer(keys.token()))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert isinstance(errors.from_rpc_error(caught.value), errors.NotFound)


async def test_unexpected_exception_is_internal_without_internals(serve, keys):
    running = await serve(probe_identity())
    stub = pb_grpc.IdentityServiceStub(running.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetTenant(pb.GetTenantRequest(), metadata=bearer(keys.token()))
    err = caught.value
    assert err.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in err.details() and "RuntimeError" not in err.details()
    assert "postgresql" not in str(rpc_status.from_call(err))
    assert details_of(err)["ErrorInfo"].reason == "INTERNAL"


async def test_unimplemented_method_is_unimplemented_not_internal(serve, keys):
    running = await serve(probe_identity())
    stub = pb_grpc.IdentityServiceStub(running.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.DeleteUser(pb.DeleteUserRequest(user_id="u"), metadata=bearer(keys.token()))
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
