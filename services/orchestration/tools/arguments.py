"""A model's call arguments checked against the tool's JSON schema before anything runs them.

A call whose arguments do not parse, are not an object, or break the schema never reaches the tool
(nor the client, nor an approver): the model gets an error result that says why, and can try again.
Schemas were checked with Draft 2020-12's check_schema when the agent was saved, so they are valid.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import jsonschema
import jsonschema.exceptions

# A model reads the error back; a whole dump of a large bad value would crowd its context.
_VALUE_CHARS = 200


@dataclasses.dataclass(frozen=True)
class CheckedArguments:
    """`arguments` when they are fine, else `error`: the sentence the model gets as the result."""

    arguments: dict[str, Any] | None
    error: str = ""


def check_arguments(name: str, arguments_json: str, schema: Mapping[str, Any]) -> CheckedArguments:
    prefix = f"arguments of tool {name!r} refused: "
    try:
        arguments = json.loads(arguments_json or "{}")
    except ValueError as exc:
        return CheckedArguments(None, f"{prefix}not valid JSON ({exc})")
    if not isinstance(arguments, dict):
        return CheckedArguments(None, f"{prefix}must be a JSON object, got {type(arguments).__name__}")
    if not schema:
        return CheckedArguments(arguments)
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
    if error is None:
        return CheckedArguments(arguments)
    where = "/" + "/".join(str(p) for p in error.absolute_path)
    return CheckedArguments(None, f"{prefix}at {where}: {error.message[:_VALUE_CHARS]}")
