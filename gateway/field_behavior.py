"""google.api.field_behavior on requests: REQUIRED fields checked, OUTPUT_ONLY fields dropped (AIP-203).

Only top-level REQUIRED fields of a request are checked: a REQUIRED field inside a resource depends
on the update mask (AIP-134), which the service reads, so the gateway is never stricter than it.
"""

from __future__ import annotations

import functools
from collections.abc import Collection

from google.api import field_behavior_pb2
from google.protobuf import descriptor
from google.protobuf.message import Message

from gateway.errors import BadInput

REQUIRED = field_behavior_pb2.REQUIRED
OUTPUT_ONLY = field_behavior_pb2.OUTPUT_ONLY


@functools.cache
def behaviors(field: descriptor.FieldDescriptor) -> frozenset[int]:
    """The field's google.api.field_behavior values (REQUIRED, OUTPUT_ONLY, ...)."""
    return frozenset(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


@functools.cache
def required_fields(message: descriptor.Descriptor) -> tuple[descriptor.FieldDescriptor, ...]:
    return tuple(f for f in message.fields if REQUIRED in behaviors(f))


def _is_set(message: Message, field: descriptor.FieldDescriptor) -> bool:
    if field.is_repeated:
        return len(getattr(message, field.name)) > 0
    if field.has_presence:
        return message.HasField(field.name)
    # proto3 scalars: the default value is indistinguishable from absent, and the services reject it.
    return bool(getattr(message, field.name))


def check_required(message: Message, request: descriptor.Descriptor) -> None:
    """BadInput naming every REQUIRED field of `request` that `message` leaves unset: the proto path
    as the violation's field (as the services name it), the JSON name in its description."""
    missing = [
        (f.name, f"is required ({f.json_name} in JSON)")
        for f in required_fields(request)
        if not _is_set(message, f)
    ]
    if missing:
        raise BadInput(*missing[0], *missing[1:])


def clear_output_only(message: Message, keep: Collection[str] = (), prefix: str = "") -> None:
    """Clears every OUTPUT_ONLY field set in `message` or the messages in it, except the dotted paths
    in `keep` (what the URL path binds). Walks only what is set, so an empty request costs nothing."""
    for field, value in message.ListFields():
        path = prefix + field.name
        if OUTPUT_ONLY in behaviors(field) and path not in keep:
            message.ClearField(field.name)
        elif field.message_type is None or field.message_type.GetOptions().map_entry:
            continue
        elif field.is_repeated:
            for item in value:
                clear_output_only(item, keep, path + ".")
        else:
            clear_output_only(value, keep, path + ".")
