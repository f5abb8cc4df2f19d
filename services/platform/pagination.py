"""Page sizes and opaque, tamper-evident page tokens (a signed keyset cursor, never an OFFSET)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from services.platform import errors

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def page_size(requested: int, *, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE) -> int:
    """0 means the default, too large is clamped, negative is INVALID_ARGUMENT."""
    if requested < 0:
        raise errors.InvalidArgument.field("page_size", "must not be negative")
    if requested == 0:
        return default
    return min(requested, maximum)


class PageTokens:
    """Encodes a cursor (a small JSON value) with an HMAC bound to the secret and to `scope`.

    The scope (for example the method and its filters) makes a token from one listing useless in
    another, so a client cannot change a filter half-way through a listing.
    """

    def __init__(self, secret: bytes):
        if not secret:
            raise ValueError("page token secret must not be empty")
        self._secret = secret

    def _mac(self, scope: str, payload: bytes) -> bytes:
        return hmac.new(self._secret, scope.encode() + b"\0" + payload, hashlib.sha256).digest()[:16]

    def encode(self, scope: str, cursor: Any) -> str:
        payload = json.dumps(cursor, separators=(",", ":"), sort_keys=True).encode()
        return base64.urlsafe_b64encode(self._mac(scope, payload) + payload).decode().rstrip("=")

    def decode(self, scope: str, token: str) -> Any | None:
        """The cursor of a token (None for the empty token); INVALID_ARGUMENT if it was tampered with."""
        if not token:
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (ValueError, TypeError):
            raise errors.InvalidArgument.field("page_token", "is not a valid page token") from None
        mac, payload = raw[:16], raw[16:]
        if len(mac) != 16 or not hmac.compare_digest(mac, self._mac(scope, payload)):
            raise errors.InvalidArgument.field("page_token", "is not a valid page token")
        return json.loads(payload)
