"""The one exception tree of agentmesh, and its mapping to and from google.rpc.Status.

Service layers raise these; the error middleware turns them into a gRPC status with ErrorInfo and
the detail each kind carries (BadRequest, PreconditionFailure, QuotaFailure, RetryInfo). Clients (the
gateway, peers) call `from_rpc_error` to get the same exception back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "agentmesh"


@dataclasses.dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


@dataclasses.dataclass(frozen=True)
class Violation:
    """A precondition or quota violation: `subject` is what was checked (a field path or limit name)."""

    subject: str
    description: str
    type: str = ""


class AgentmeshError(Exception):
    """Base of every error a service may raise on purpose. `reason` is a stable UPPER_SNAKE name."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    default_reason = "UNKNOWN"

    def __init__(self, message: str, *, reason: str | None = None, metadata: Mapping[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})

    def details(self) -> list[Message]:
        """google.rpc detail messages besides ErrorInfo."""
        return []


class InvalidArgument(AgentmeshError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(self, message: str, violations: Iterable[FieldViolation] = (), **kw: Any):
        super().__init__(message, **kw)
        self.violations = list(violations)

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        return cls(f"{field}: {description}", [FieldViolation(field, description)])

    def details(self) -> list[Message]:
        return [
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in self.violations
                ]
            )
        ]


class NotFound(AgentmeshError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(AgentmeshError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(AgentmeshError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"

    def __init__(self, message: str, violations: Iterable[Violation] = (), **kw: Any):
        super().__init__(message, **kw)
        self.violations = list(violations)

    def details(self) -> list[Message]:
        if not self.violations:
            return []
        return [
            error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(
                        type=v.type, subject=v.subject, description=v.description
                    )
                    for v in self.violations
                ]
            )
        ]


class QuotaExceeded(FailedPrecondition):
    """A tier limit that more requests will not cure (for example: maximum agents)."""

    default_reason = "QUOTA_EXCEEDED"

    def details(self) -> list[Message]:
        return [
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(subject=v.subject, description=v.description)
                    for v in self.violations
                ]
            )
        ]


class Aborted(AgentmeshError):
    """A concurrency conflict such as a stale etag: read again and retry."""

    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"


class Unauthenticated(AgentmeshError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(AgentmeshError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class ResourceExhausted(AgentmeshError):
    """A rate or concurrency limit: retry after `retry_after` seconds."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RATE_LIMITED"

    def __init__(self, message: str, *, retry_after: float, violations: Iterable[Violation] = (), **kw: Any):
        super().__init__(message, **kw)
        self.retry_after = max(0.0, retry_after)
        self.violations = list(violations)

    def details(self) -> list[Message]:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(self.retry_after * 1e9))
        out: list[Message] = [error_details_pb2.RetryInfo(retry_delay=delay)]
        if self.violations:
            out.append(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(subject=v.subject, description=v.description)
                        for v in self.violations
                    ]
                )
            )
        return out


class Unavailable(AgentmeshError):
    """A dependency (database, Redis, a peer) cannot be reached; retryable."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class DeadlineExceeded(AgentmeshError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class Cancelled(AgentmeshError):
    code = grpc.StatusCode.CANCELLED
    default_reason = "CANCELLED"


class Internal(AgentmeshError):
    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"


_BY_CODE: dict[grpc.StatusCode, type[AgentmeshError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Aborted,
        Unauthenticated,
        PermissionDenied,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        Cancelled,
        Internal,
    )
}


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def status_proto(error: AgentmeshError) -> status_pb2.Status:
    """The google.rpc.Status of a domain error: its code, message, ErrorInfo and typed details."""
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
    return status_pb2.Status(
        code=error.code.value[0],
        message=error.message,
        details=[_pack(info), *(_pack(d) for d in error.details())],
    )


def to_status(error: AgentmeshError) -> grpc.Status:
    """The grpc.Status (with google.rpc.Status details in trailers) for a domain error."""
    return rpc_status.to_status(status_proto(error))


def status_proto_of(error: grpc.RpcError) -> status_pb2.Status:
    """The google.rpc.Status a failed call carried, or one built from its code and details."""
    # A failed call is both a grpc.RpcError and a grpc.Call; the stubs type the two apart.
    proto = rpc_status.from_call(error)  # type: ignore[arg-type]  # a failed call is also a grpc.Call
    if proto is not None:
        return proto
    code = error.code()
    return status_pb2.Status(code=code.value[0] if code else code_pb2.UNKNOWN, message=error.details() or "")


def from_rpc_error(error: grpc.RpcError) -> AgentmeshError:
    """Turns a failed call back into the typed exception its server raised."""
    proto = status_proto_of(error)
    code = next((c for c in grpc.StatusCode if c.value[0] == proto.code), grpc.StatusCode.UNKNOWN)
    cls = _BY_CODE.get(code, AgentmeshError)
    reason, metadata = None, {}
    field_violations: list[FieldViolation] = []
    violations: list[Violation] = []
    retry_after = 0.0
    for detail in proto.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, metadata = info.reason, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            field_violations += [FieldViolation(v.field, v.description) for v in bad.field_violations]
        elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            pre = error_details_pb2.PreconditionFailure()
            detail.Unpack(pre)
            violations += [Violation(v.subject, v.description, v.type) for v in pre.violations]
        elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            quota = error_details_pb2.QuotaFailure()
            detail.Unpack(quota)
            violations += [Violation(v.subject, v.description) for v in quota.violations]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.ToNanoseconds() / 1e9
    kw: dict[str, Any] = {"reason": reason, "metadata": metadata}
    if cls is InvalidArgument:
        err: AgentmeshError = InvalidArgument(proto.message, field_violations, **kw)
    elif cls is FailedPrecondition:
        err = (QuotaExceeded if reason == QuotaExceeded.default_reason else FailedPrecondition)(
            proto.message, violations, **kw
        )
    elif cls is ResourceExhausted:
        err = ResourceExhausted(proto.message, retry_after=retry_after, violations=violations, **kw)
    else:
        err = cls(proto.message, **kw)
        err.code = code
    return err
