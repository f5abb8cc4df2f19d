"""Input checks shared by the identity use cases. Each failure names its field (BadRequest).

Names are not normalised: an upper-case tenant name or username is refused with a message saying
so, rather than silently lower-cased, so that what a user typed is what is stored and shown.
"""

from __future__ import annotations

import re

from services.platform import errors

TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9-]{1,62}")
USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
SERVICE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
MAX_DISPLAY_NAME = 200
# Login takes any password up to a generous bound (older policies may have allowed more); beyond it
# the request is malformed, and argon2 is never asked to chew on megabytes.
MAX_LOGIN_PASSWORD = 1024
MAX_REQUEST_ID = 100
MAX_ID = 36


def _name(
    value: str, field: str, pattern: re.Pattern[str], rule: str, maximum: int
) -> errors.FieldViolation | None:
    if not value:
        return errors.FieldViolation(field, "is required")
    if len(value) > maximum:
        return errors.FieldViolation(field, f"must be at most {maximum} characters")
    if value != value.lower() and pattern.fullmatch(value.lower()):
        return errors.FieldViolation(field, f"must be lower case ({rule})")
    if not pattern.fullmatch(value):
        return errors.FieldViolation(field, f"must match {rule}")
    return None


def tenant_name(value: str, field: str = "tenant_name") -> errors.FieldViolation | None:
    return _name(value, field, TENANT_NAME, "[a-z0-9][a-z0-9-]{1,62}", 63)


def username(value: str, field: str = "username") -> errors.FieldViolation | None:
    return _name(value, field, USERNAME, "[a-z0-9][a-z0-9._-]{0,63}", 64)


def display_name(value: str, field: str = "display_name") -> errors.FieldViolation | None:
    if len(value) > MAX_DISPLAY_NAME:
        return errors.FieldViolation(field, f"must be at most {MAX_DISPLAY_NAME} characters")
    if any(ord(c) < 32 for c in value):
        return errors.FieldViolation(field, "must not contain control characters")
    return None


def request_id(value: str, field: str = "request_id") -> errors.FieldViolation | None:
    if len(value) > MAX_REQUEST_ID:
        return errors.FieldViolation(field, f"must be at most {MAX_REQUEST_ID} characters")
    return None


def login_password(value: str, field: str = "password") -> errors.FieldViolation | None:
    if not value:
        return errors.FieldViolation(field, "is required")
    if len(value) > MAX_LOGIN_PASSWORD:
        return errors.FieldViolation(field, f"must be at most {MAX_LOGIN_PASSWORD} characters")
    return None


def resource_id(value: str, field: str) -> errors.FieldViolation | None:
    if not value:
        return errors.FieldViolation(field, "is required")
    if len(value) > MAX_ID:
        return errors.FieldViolation(field, f"must be at most {MAX_ID} characters")
    return None


def raise_if(*violations: errors.FieldViolation | None) -> None:
    found = [v for v in violations if v is not None]
    if found:
        raise errors.InvalidArgument("; ".join(f"{v.field}: {v.description}" for v in found), found)
