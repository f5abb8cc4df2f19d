"""The OpenAPI 3.1 document, generated from the same routes the gateway serves.

Names are the proto JSON names (lowerCamelCase), as in the bodies; the gateway also accepts the proto
names in queries. Routes whose templates differ only in variable names (`/v1/agents/{agent_id}` and
`/v1/agents/{agent.id}`) share one path, as OpenAPI requires: its parameters are named by the first
route, and an operation that binds another field says which.
"""

from __future__ import annotations

import re
from typing import Any

from google.protobuf import descriptor

from gateway import csv_export
from gateway.field_behavior import OUTPUT_ONLY as _OUTPUT_ONLY
from gateway.field_behavior import REQUIRED as _REQUIRED
from gateway.field_behavior import behaviors
from gateway.routes import Route, resolve_field

_FD = descriptor.FieldDescriptor
_INT32 = {_FD.TYPE_INT32, _FD.TYPE_SINT32, _FD.TYPE_SFIXED32, _FD.TYPE_UINT32, _FD.TYPE_FIXED32}
_INT64 = {_FD.TYPE_INT64, _FD.TYPE_SINT64, _FD.TYPE_SFIXED64, _FD.TYPE_UINT64, _FD.TYPE_FIXED64}
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?s$"},
    "google.protobuf.FieldMask": {"type": "string", "description": "comma-separated lowerCamel paths"},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "additionalProperties": True,
    },
    "google.protobuf.StringValue": {"type": ["string", "null"]},
    "google.protobuf.BoolValue": {"type": ["boolean", "null"]},
    "google.protobuf.Int32Value": {"type": ["integer", "null"]},
    "google.protobuf.Int64Value": {"type": ["string", "integer", "null"]},
    "google.protobuf.DoubleValue": {"type": ["number", "null"]},
    "google.protobuf.FloatValue": {"type": ["number", "null"]},
    "google.protobuf.BytesValue": {"type": ["string", "null"]},
}
ERROR_SCHEMA = {
    "type": "object",
    "required": ["code", "status", "message", "details"],
    "properties": {
        "code": {"type": "integer", "description": "google.rpc.Code"},
        "status": {"type": "string", "description": "the code's name, e.g. NOT_FOUND"},
        "message": {"type": "string"},
        "details": {"type": "array", "items": {"$ref": "#/components/schemas/google.protobuf.Any"}},
    },
}


class _Schemas:
    def __init__(self) -> None:
        self.components: dict[str, Any] = {"google.protobuf.Any": _WELL_KNOWN["google.protobuf.Any"]}

    def ref(self, message: descriptor.Descriptor) -> dict[str, Any]:
        if message.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[message.full_name])
        name = message.full_name
        if name not in self.components:
            self.components[name] = {}  # placeholder first: messages may refer to themselves
            props = {f.json_name: self.field(f) for f in message.fields}
            for f in message.fields:
                if _OUTPUT_ONLY in behaviors(f):
                    props[f.json_name]["readOnly"] = True
            schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
            required = [f.json_name for f in message.fields if _REQUIRED in behaviors(f)]
            if required:
                schema["required"] = required
            self.components[name] = schema
        return {"$ref": f"#/components/schemas/{name}"}

    def scalar(self, field: descriptor.FieldDescriptor) -> dict[str, Any]:
        if field.message_type is not None:
            return self.ref(field.message_type)
        if field.enum_type is not None:
            return {"type": "string", "enum": [v.name for v in field.enum_type.values]}
        if field.type == _FD.TYPE_BOOL:
            return {"type": "boolean"}
        if field.type in _INT32:
            return {"type": "integer", "format": "int32"}
        if field.type in _INT64:
            # proto3 JSON writes 64-bit integers as strings and reads either form.
            return {"type": ["string", "integer"], "format": "int64"}
        if field.type in (_FD.TYPE_FLOAT, _FD.TYPE_DOUBLE):
            return {"type": "number"}
        if field.type == _FD.TYPE_BYTES:
            return {"type": "string", "contentEncoding": "base64"}
        return {"type": "string"}

    def field(self, field: descriptor.FieldDescriptor) -> dict[str, Any]:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value = field.message_type.fields_by_name["value"]
            return {"type": "object", "additionalProperties": self.scalar(value)}
        if field.is_repeated:
            return {"type": "array", "items": self.scalar(field)}
        return self.scalar(field)


_VARIABLE = re.compile(r"\{[^}]*\}")


def _json_path(message: descriptor.Descriptor, path: str) -> str:
    return ".".join(f.json_name for f in resolve_field(message, path))


def _openapi_path(route: Route, names: list[str]) -> str:
    """The template with each variable (and its `=pattern`) replaced by the given names, in order."""
    pieces = iter(names)
    return _VARIABLE.sub(lambda _: "{" + next(pieces) + "}", route.template.text)


def _path_parameters(route: Route, names: list[str], schemas: _Schemas) -> list[dict[str, Any]]:
    request = route.method.input_type
    return [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": schemas.scalar(resolve_field(request, var)[-1]),
        }
        for name, var in zip(names, route.template.variables, strict=True)
    ]


def _query_parameters(route: Route, schemas: _Schemas) -> list[dict[str, Any]]:
    params = []
    for field in route.query_fields():
        leaves = [(field.json_name, field)]
        if field.message_type is not None and not field.message_type.full_name.startswith("google.protobuf."):
            if field.is_repeated:
                continue
            leaves = [
                (f"{field.json_name}.{sub.json_name}", sub)
                for sub in field.message_type.fields
                if sub.message_type is None or sub.message_type.full_name.startswith("google.protobuf.")
            ]
        for name, leaf in leaves:
            param: dict[str, Any] = {
                "name": name,
                "in": "query",
                "required": leaf is field and _REQUIRED in behaviors(field),
                "schema": schemas.field(leaf),
            }
            if leaf.is_repeated:
                param.update(style="form", explode=True)
            params.append(param)
    return params


def _response_schema(route: Route, schemas: _Schemas) -> dict[str, Any]:
    if route.response_body:
        return schemas.field(route.method.output_type.fields_by_name[route.response_body])
    return schemas.ref(route.method.output_type)


def _request_body(route: Route, schemas: _Schemas) -> tuple[dict[str, Any], bool]:
    """The body's schema and whether a body is required. A `*` body leaves out the fields the path
    binds, so that a REQUIRED id in the path is not also asked of the body."""
    request = route.method.input_type
    if route.body != "*":
        field = request.fields_by_name[route.body]
        return schemas.field(field), _REQUIRED in behaviors(field)
    ref = schemas.ref(request)
    in_path = {resolve_field(request, var)[0].json_name for var in route.template.variables}
    if not in_path:
        return ref, bool(schemas.components[request.full_name].get("required"))
    whole = schemas.components[request.full_name]
    schema = {**whole, "properties": {k: v for k, v in whole["properties"].items() if k not in in_path}}
    required = [name for name in whole.get("required", []) if name not in in_path]
    schema.pop("required", None)
    if required:
        schema["required"] = required
    return schema, bool(required)


def operation(route: Route, schemas: _Schemas, op_id: str) -> dict[str, Any]:
    """The operation; its path parameters belong to the path item (shared by every method)."""
    params = _query_parameters(route, schemas)
    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": f"{route.service}.{route.method.name}",
        "tags": [route.method.containing_service.name],
        "parameters": params,
    }
    if route.body:
        body_schema, body_required = _request_body(route, schemas)
        op["requestBody"] = {
            "required": body_required,
            "content": {"application/json": {"schema": body_schema}},
        }
    result = _response_schema(route, schemas)
    if route.server_streaming:
        content = {
            "application/x-ndjson": {
                "schema": {
                    "type": "object",
                    "properties": {"result": result, "error": {"$ref": "#/components/schemas/Error"}},
                },
            },
            "text/event-stream": {"schema": {"type": "string"}},
        }
    else:
        content = {"application/json": {"schema": result}}
        if csv_export.applies(route):
            content[csv_export.MEDIA_TYPE] = csv_export.OPENAPI_CONTENT
    error = {
        "description": "error",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    op["responses"] = {"200": {"description": "OK", "content": content}, "default": error}
    return op


def document(routes: list[Route], *, title: str = "agentmesh", version: str = "v1") -> dict[str, Any]:
    schemas = _Schemas()
    paths: dict[str, dict[str, Any]] = {}
    names_of_shape: dict[str, list[str]] = {}
    seen: dict[str, int] = {}
    for route in routes:
        base = f"{route.method.containing_service.name}_{route.method.name}"
        seen[base] = seen.get(base, 0) + 1
        op_id = base if seen[base] == 1 else f"{base}_{seen[base]}"
        own = [_json_path(route.method.input_type, v) for v in route.template.variables]
        names = names_of_shape.setdefault(_VARIABLE.sub("{}", route.template.text), own)
        item = paths.setdefault(_openapi_path(route, names), {})
        if names:
            item.setdefault("parameters", _path_parameters(route, names, schemas))
        op = operation(route, schemas, op_id)
        if own != names:
            op["description"] = "; ".join(
                f"The path parameter `{n}` sets `{o}`." for n, o in zip(names, own, strict=True) if n != o
            )
        item[route.http_method.lower()] = op
    schemas.components["Error"] = ERROR_SCHEMA
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "Generated from the protos' google.api.http rules.",
        },
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.components.items())),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
        "security": [{"bearerAuth": []}, {}],
    }
