"""GetUsage as CSV: `GET /v1/usage` with `Accept: text/csv`.

Specific to GetUsage, not generic over "any response with repeated `rows` and `totals`": GetUsage is
the only such response, and its columns depend on the request (the keys it groups by), which a
generic exporter could only learn from a per-method rule anyway.

The columns are the group keys asked for, in the contract's order (all four when none is asked for,
as GetUsage itself then groups by all four), then the sums, named as in the JSON (lowerCamelCase).
One line per UsageRow, then the totals, whose first cell is "total". Integers are written as digits,
the strings proto3 JSON gives int64s. The quota is not a row and stays in the JSON.

A key cell that a spreadsheet would run as a formula (it starts with =, +, -, @, a tab or a carriage
return; a model name may be "=1+1") is written with a leading apostrophe, OWASP's advice for CSV
files meant to be opened in a spreadsheet. Every other cell is the JSON value as it is.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from typing import Any

from google.protobuf import descriptor
from google.protobuf.message import Message
from starlette.responses import Response

from agentmesh.conversation.v1 import conversation_service_pb2 as pb
from gateway.routes import Route

MEDIA_TYPE = "text/csv"
METHOD = pb.DESCRIPTOR.services_by_name["ConversationService"].methods_by_name["GetUsage"].full_name
# The OpenAPI response content the route lists beside application/json.
OPENAPI_CONTENT = {
    "schema": {
        "type": "string",
        "description": "the group keys asked for, then the sums, in lowerCamelCase; one line per row, "
        'then a line whose first cell is "total"',
    }
}
_ROW = pb.UsageRow.DESCRIPTOR
# In the contract's order, which is also UsageRow's field order and the JSON's.
_KEYS = {
    pb.USAGE_GROUPING_USER: _ROW.fields_by_name["user_id"],
    pb.USAGE_GROUPING_AGENT: _ROW.fields_by_name["agent_id"],
    pb.USAGE_GROUPING_MODEL: _ROW.fields_by_name["model"],
    pb.USAGE_GROUPING_DAY: _ROW.fields_by_name["day"],
}
_SUMS = [f for f in _ROW.fields if f not in _KEYS.values()]
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def applies(route: Route) -> bool:
    """Whether `route` has a CSV form (GetUsage's)."""
    return route.method.full_name == METHOD


def wanted(accept: str) -> bool:
    """Whether an Accept header prefers text/csv: it names text/csv with a q above application/json's
    (or application/*'s). JSON, the default, wins a tie; */* does not count against a text/csv that
    is named. An unreadable q counts as 0."""
    weights: dict[str, float] = {}
    for item in accept.split(","):
        media, *params = (piece.strip() for piece in item.split(";"))
        weight = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    weight = 0.0
        weights.setdefault(media.lower(), weight)
    named = weights.get(MEDIA_TYPE, 0.0)
    json = weights.get("application/json", weights.get("application/*", 0.0))
    return named > 0.0 and named > json


def columns(request: pb.GetUsageRequest) -> list[descriptor.FieldDescriptor]:
    asked = set(request.group_by)
    return [field for grouping, field in _KEYS.items() if not asked or grouping in asked] + _SUMS


def _cell(field: descriptor.FieldDescriptor, value: Any) -> Any:
    if field in _SUMS or not str(value).startswith(_FORMULA_STARTS):
        return value
    return f"'{value}"


def render(request: pb.GetUsageRequest, reply: pb.GetUsageResponse) -> str:
    """The CSV text (RFC 4180: CRLF line ends, quotes where needed)."""
    fields = columns(request)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([f.json_name for f in fields])
    for row in reply.rows:
        writer.writerow([_cell(f, getattr(row, f.name)) for f in fields])
    # The totals' keys are empty, so the first key column can carry the label.
    writer.writerow(["total", *(_cell(f, getattr(reply.totals, f.name)) for f in fields[1:])])
    return out.getvalue()


def response(request: Message, reply: Message, *, headers: Mapping[str, str]) -> Response:
    """The CSV download of GetUsage's `reply` to `request`."""
    if not isinstance(request, pb.GetUsageRequest) or not isinstance(reply, pb.GetUsageResponse):
        raise TypeError(f"no CSV form for {type(request).__name__} -> {type(reply).__name__}")
    return Response(
        render(request, reply),
        media_type=f"{MEDIA_TYPE}; charset=utf-8",
        headers={**headers, "Content-Disposition": 'attachment; filename="usage.csv"'},
    )
