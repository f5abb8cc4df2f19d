"""Errors as HTTP: the canonical gRPC-to-HTTP table and the `{code, status, message, details}` body.

`details` are the google.rpc.Status details in their JSON form (each with its `@type`), the same for
errors from upstream services and for input the gateway rejects before calling one.
"""

from __future__ import annotations

import math
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2, json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2

from services.platform.errors import status_proto_of

HTTP_STATUS: dict[int, int] = {
    code_pb2.OK: 200,
    code_pb2.CANCELLED: 499,
    code_pb2.UNKNOWN: 500,
    code_pb2.INVALID_ARGUMENT: 400,
    code_pb2.DEADLINE_EXCEEDED: 504,
    code_pb2.NOT_FOUND: 404,
    code_pb2.ALREADY_EXISTS: 409,
    code_pb2.PERMISSION_DENIED: 403,
    code_pb2.RESOURCE_EXHAUSTED: 429,
    code_pb2.FAILED_PRECONDITION: 400,
    code_pb2.ABORTED: 409,
    code_pb2.OUT_OF_RANGE: 400,
    code_pb2.UNIMPLEMENTED: 501,
    code_pb2.INTERNAL: 500,
    code_pb2.UNAVAILABLE: 503,
    code_pb2.DATA_LOSS: 500,
    code_pb2.UNAUTHENTICATED: 401,
}


class BadInput(Exception):
    """Input the gateway rejects itself (400 with a BadRequest field violation for `field` and one
    for each of `more`, as (field, description) pairs)."""

    def __init__(self, field: str, description: str, *more: tuple[str, str]):
        super().__init__(f"{field}: {description}" + (f" (and {len(more)} more)" if more else ""))
        self.field = field
        self.description = description
        self.violations = [(field, description), *more]

    def status(self) -> status_pb2.Status:
        violations = [
            error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
            for field, description in self.violations
        ]
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=violations))
        return status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=str(self), details=[detail])


def code_name(code: int) -> str:
    return code_pb2.Code.Name(code) if code in code_pb2.Code.values() else "UNKNOWN"


def simple_status(code: int, message: str) -> status_pb2.Status:
    return status_pb2.Status(code=code, message=message)


def exhausted(message: str, retry_after: float | None = None) -> status_pb2.Status:
    """RESOURCE_EXHAUSTED for a limit the gateway enforces itself, with RetryInfo when it clears."""
    status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=message)
    if retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(retry_after * 1e9))
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return status


def status_of_rpc_error(error: grpc.RpcError) -> status_pb2.Status:
    try:
        return status_proto_of(error)
    except Exception:  # a status that does not parse must still give an answer
        return status_pb2.Status(code=code_pb2.UNKNOWN, message="upstream error")


def _detail_json(detail: any_pb2.Any) -> dict[str, Any]:
    try:
        return json_format.MessageToDict(detail)
    except Exception:  # an Any whose type this process does not know
        return {"@type": detail.type_url}


def body_of(status: status_pb2.Status) -> dict[str, Any]:
    return {
        "code": status.code,
        "status": code_name(status.code),
        "message": status.message,
        "details": details_of(status),
    }


def details_of(status: status_pb2.Status) -> list[dict[str, Any]]:
    """The status details in JSON, each with its `@type` (HTTP bodies and WebSocket errors alike)."""
    return [_detail_json(d) for d in status.details]


def retry_after(status: status_pb2.Status) -> int | None:
    """Seconds from a RetryInfo detail, rounded up (Retry-After takes whole seconds)."""
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return max(0, math.ceil(int(info.retry_delay.ToNanoseconds()) / 1e9))
    return None


def http_status(status: status_pb2.Status) -> int:
    return HTTP_STATUS.get(status.code, 500)


def headers_of(status: status_pb2.Status) -> dict[str, str]:
    delay = retry_after(status)
    return {"Retry-After": str(delay)} if delay is not None else {}
