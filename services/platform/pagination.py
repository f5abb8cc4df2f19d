"""Page sizes and opaque, tamper-evident page tokens (a signed keyset cursor, never an OFFSET)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from services.platform import errors

T = TypeVar("T")
C = TypeVar("C")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def page_size(requested: int, *, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE) -> int:
    """0 means the default, too large is clamped, negative is INVALID_ARGUMENT."""
    if requested < 0:
        raise errors.InvalidArgument.field("page_size", "must not be negative")
    if requested == 0:
        return default
    return min(requested, maximum)


_page_size = page_size  # paginate's keyword argument shadows the function inside it


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


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    next_page_token: str


def keyset(cursor: Any) -> tuple[int, str]:
    """A (sort key, id) cursor as it came out of a page token; ValueError when it has another shape."""
    if (
        isinstance(cursor, list)
        and len(cursor) == 2
        and type(cursor[0]) is int
        and isinstance(cursor[1], str)
    ):
        return cursor[0], cursor[1]
    raise ValueError("not a (sort key, id) cursor")


def position(cursor: Any) -> int:
    """A positive integer cursor (a version, a sequence number); ValueError otherwise."""
    if type(cursor) is int and cursor >= 0:
        return cursor
    raise ValueError("not a position cursor")


async def paginate(
    tokens: PageTokens,
    scope: Sequence[str | int | bool | None],
    *,
    page_size: int,
    page_token: str,
    parse: Callable[[Any], C],
    fetch: Callable[[C | None, int], Awaitable[list[T]]],
    cursor_of: Callable[[T], Any],
    maximum: int = MAX_PAGE_SIZE,
) -> Page[T]:
    """One page of a keyset listing, and the signed token of the next one.

    `scope` names the listing and every filter that shapes it (a token is valid only for the same
    scope); `parse` checks a decoded cursor (raising ValueError on a foreign shape); `fetch(after,
    limit)` reads up to `limit` rows after the cursor (None: from the start); `cursor_of` is the
    cursor of a row. One row more than the page is read to know whether another page follows.
    """
    size = _page_size(page_size, maximum=maximum)
    key = json.dumps(list(scope), separators=(",", ":"))
    raw = tokens.decode(key, page_token)
    try:
        after = None if raw is None else parse(raw)
    except (ValueError, TypeError):
        raise errors.InvalidArgument.field("page_token", "is not a valid page token") from None
    rows = await fetch(after, size + 1)
    if len(rows) <= size:
        return Page(rows, "")
    rows = rows[:size]
    return Page(rows, tokens.encode(key, cursor_of(rows[-1])))
