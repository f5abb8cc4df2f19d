"""Checks every request message gets before its handler runs, whatever the service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from services.platform import errors


def _nul_fields(message: Any, prefix: str = "") -> Iterator[str]:
    for field, value in message.ListFields():
        path = prefix + field.name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for key, item in value.items():
                if isinstance(key, str) and "\x00" in key:
                    yield f"{path}[{key!r}]"
                elif value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    yield from _nul_fields(item, f"{path}[{key!r}].")
                elif isinstance(item, str) and "\x00" in item:
                    yield f"{path}[{key!r}]"
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            items = value if field.is_repeated else [value]
            for i, item in enumerate(items):
                yield from _nul_fields(item, f"{path}[{i}]." if field.is_repeated else path + ".")
        elif field.type == FieldDescriptor.TYPE_STRING:
            items = value if field.is_repeated else [value]
            if any("\x00" in item for item in items):
                yield path


def check_request(message: Any) -> None:
    """No string of a request may hold U+0000: PostgreSQL text cannot store it, so letting one
    through turns bad input into a database error (INTERNAL) instead of INVALID_ARGUMENT."""
    if not hasattr(message, "ListFields"):
        return
    bad = list(_nul_fields(message))
    if bad:
        raise errors.InvalidArgument(
            "strings must not contain NUL (U+0000)",
            [errors.FieldViolation(path, "must not contain NUL (U+0000)") for path in bad],
        )


async def checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for message in requests:
        check_request(message)
        yield message
