"""Domain time is int microseconds since the Unix epoch (UTC): exact in keyset cursors and equality
(no float rounding), a BIGINT in the database, a plain number in a JSON page token, and lossless
to and from a protobuf Timestamp.

0 means "not set" (protobuf's own default): a time field absent from a message reads as 0 and 0 is
written as an absent field.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from google.protobuf import message as _message
from google.protobuf import timestamp_pb2

from services.platform import errors

# 9999-12-31T23:59:59Z: the largest second a Timestamp may hold.
MAX_TIMESTAMP_SECONDS = 253_402_300_799


def micros(clock: Callable[[], float] = time.time) -> int:
    """Now (or the clock's now, in float seconds as time.time gives it) in microseconds."""
    return int(clock() * 1_000_000)


def to_timestamp(us: int) -> timestamp_pb2.Timestamp | None:
    """The Timestamp of a domain time; None (the field left unset) for 0."""
    if not us:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromMicroseconds(us)
    return ts


def from_timestamp(request: _message.Message, field: str) -> int:
    """A request's time field in microseconds (0 when unset); INVALID_ARGUMENT when out of range."""
    if not request.HasField(field):
        return 0
    value: timestamp_pb2.Timestamp = getattr(request, field)
    if value.seconds < 0 or value.nanos < 0:
        raise errors.InvalidArgument.field(field, "must not be before 1970")
    if value.seconds > MAX_TIMESTAMP_SECONDS or value.nanos > 999_999_999:
        # Beyond 9999-12-31 or nanos past a second: not a valid Timestamp (protobuf raises ValueError).
        raise errors.InvalidArgument.field(field, "is not a valid timestamp")
    return value.ToMicroseconds()
