"""Identity's field rules, on services/platform/validation.py (ids and request ids have the
platform's one limit each). Each failure names its field (BadRequest).

Names are not normalised: an upper-case tenant name or username is refused with a message saying
so, rather than silently lower-cased, so that what a user typed is what is stored and shown.
"""

from __future__ import annotations

import re

from services.platform.validation import Violations

TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9-]{1,62}")
USERNAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
SERVICE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
MAX_DISPLAY_NAME = 200
# Login takes any password up to a generous bound (older policies may have allowed more); beyond it
# the request is malformed, and argon2 is never asked to chew on megabytes.
MAX_LOGIN_PASSWORD = 1024


def _name(v: Violations, value: str, field: str, pattern: re.Pattern[str], rule: str, maximum: int) -> None:
    if not value:
        v.add(field, "is required")
    elif len(value) > maximum:
        v.add(field, f"must be at most {maximum} characters")
    elif value != value.lower() and pattern.fullmatch(value.lower()):
        v.add(field, f"must be lower case ({rule})")
    elif not pattern.fullmatch(value):
        v.add(field, f"must match {rule}")


def tenant_name(v: Violations, value: str, field: str = "tenant_name") -> None:
    _name(v, value, field, TENANT_NAME, "[a-z0-9][a-z0-9-]{1,62}", 63)


def username(v: Violations, value: str, field: str = "username") -> None:
    _name(v, value, field, USERNAME, "[a-z0-9][a-z0-9._-]{0,63}", 64)


def service_name(v: Violations, value: str, field: str = "service_name") -> None:
    v.check(bool(SERVICE_NAME.fullmatch(value)), field, "must match [a-z0-9][a-z0-9-]{0,62}")


def display_name(v: Violations, value: str, field: str = "display_name") -> None:
    if len(value) > MAX_DISPLAY_NAME:
        v.add(field, f"must be at most {MAX_DISPLAY_NAME} characters")
    elif any(ord(c) < 32 for c in value):
        v.add(field, "must not contain control characters")


def login_password(v: Violations, value: str, field: str = "password") -> None:
    if not value:
        v.add(field, "is required")
    elif len(value) > MAX_LOGIN_PASSWORD:
        v.add(field, f"must be at most {MAX_LOGIN_PASSWORD} characters")
