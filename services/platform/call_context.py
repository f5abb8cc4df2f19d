"""The call being served, in a contextvar: the servicer, the service layer's logs and the peer
channels (which forward identity, request id and deadline) all see the same CallInfo.

The interceptor (services/platform/interceptor.py) sets it around every call; auth's `principal()`
reads the verified caller from it.
"""

from __future__ import annotations

import contextvars
import dataclasses
from typing import TYPE_CHECKING, Any

from grpc.aio import ServicerContext

from services.platform import errors

if TYPE_CHECKING:
    # auth reads current_call, so it imports this module; the Principal type is all needed here.
    from services.platform.auth import Principal


@dataclasses.dataclass
class CallInfo:
    method: str
    context: ServicerContext[Any, Any]
    metadata: tuple[tuple[str, str | bytes], ...]
    request_id: str
    # Monotonic time by which the caller wants an answer, or None.
    deadline: float | None
    principal: Principal | None = None

    def require_principal(self) -> Principal:
        if self.principal is None:
            raise errors.Unauthenticated("this call needs an access token", reason="TOKEN_REQUIRED")
        return self.principal


current_call: contextvars.ContextVar[CallInfo | None] = contextvars.ContextVar("current_call", default=None)


def metadata_value(metadata: tuple[tuple[str, str | bytes], ...], key: str) -> str | None:
    """The first string value of `key` in call metadata, or None."""
    for k, v in metadata:
        if k == key and isinstance(v, str):
            return v
    return None
