"""Field checks every service shares, each limit written once.

A check either adds to a `Violations` (so one INVALID_ARGUMENT reports every bad field of a request)
or raises at once through the `require_*` helpers when it is the request's only field to check.
"""

from __future__ import annotations

from services.platform import errors
from services.platform.errors import FieldViolation

# Resource ids (ours are uuid-like; a longer one is never an id we issued).
MAX_ID_CHARS = 128
# AIP-155 request ids: the client's, typically a UUID; room for prefixed forms.
MAX_REQUEST_ID_CHARS = 128


class Violations:
    """Collects field violations and raises them together."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def check(self, ok: bool, field: str, description: str) -> None:
        if not ok:
            self.add(field, description)

    def id(self, value: str, field: str) -> None:
        """A required resource id."""
        if not value:
            self.add(field, "is required")
        elif len(value) > MAX_ID_CHARS:
            self.add(field, f"must be at most {MAX_ID_CHARS} characters")

    def request_id(self, value: str, field: str = "request_id") -> None:
        """An optional request id (empty: the call is not deduplicated)."""
        self.check(
            len(value) <= MAX_REQUEST_ID_CHARS, field, f"must be at most {MAX_REQUEST_ID_CHARS} characters"
        )

    def raise_if_any(self) -> None:
        if self.items:
            summary = "; ".join(f"{v.field}: {v.description}" for v in self.items)
            raise errors.InvalidArgument(f"invalid request: {summary}", self.items)


def require_id(value: str, field: str) -> None:
    v = Violations()
    v.id(value, field)
    v.raise_if_any()


def require_request_id(value: str, field: str = "request_id") -> None:
    v = Violations()
    v.request_id(value, field)
    v.raise_if_any()


def update_paths(paths: list[str], updatable: tuple[str, ...], field: str = "update_mask") -> list[str]:
    """An AIP-134 field mask checked against the resource's updatable fields: "*" means all of them;
    an empty mask or a path outside `updatable` is INVALID_ARGUMENT naming the mask."""
    if not paths:
        raise errors.InvalidArgument.field(field, f'is required (paths: {", ".join(updatable)} or "*")')
    v = Violations()
    for path in paths:
        v.check(path == "*" or path in updatable, field, f"unknown or immutable path {path!r}")
    v.raise_if_any()
    return list(updatable) if "*" in paths else list(dict.fromkeys(paths))
