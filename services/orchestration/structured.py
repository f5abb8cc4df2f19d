"""Structured answers: a run whose response format is JSON_SCHEMA must answer JSON matching the
schema (Draft 2020-12). The rules live here: the format's own checks (a message's format is checked
on arrival; an agent's was checked by agents when it was configured), the answer's check, and the
text that asks the model to try again."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema

from services.orchestration.models import ResponseFormat
from services.platform.errors import FieldViolation

_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def format_problems(fmt: ResponseFormat, field: str) -> list[FieldViolation]:
    """What is wrong with a format; a broken schema's violation names the path inside it
    (`<field>.schema/properties/x/type`), so a long schema's author finds the keyword."""
    out = []
    if not fmt.json:
        if fmt.schema:
            out.append(FieldViolation(f"{field}.schema", "only a JSON_SCHEMA response format has a schema"))
        return out
    if not _NAME.fullmatch(fmt.name):
        out.append(FieldViolation(f"{field}.name", "must match [a-zA-Z0-9_-]{1,64}"))
    if not fmt.schema:
        out.append(FieldViolation(f"{field}.schema", "is required for a JSON_SCHEMA response format"))
        return out
    try:
        jsonschema.Draft202012Validator.check_schema(fmt.schema)
    except jsonschema.SchemaError as exc:
        path = "".join(f"/{p}" for p in exc.absolute_path)
        out.append(
            FieldViolation(
                f"{field}.schema{path}", f"is not a valid JSON Schema (Draft 2020-12): {exc.message}"
            )
        )
    return out


def check_answer(fmt: ResponseFormat, answer: str) -> tuple[Any, str]:
    """(the parsed answer, "") when `answer` is JSON matching the schema, else (None, "<path>: <why>")
    with the path a JSON pointer into the answer ("/" for the whole of it)."""
    try:
        value = json.loads(answer)
    except ValueError as exc:
        return None, f"/: not valid JSON ({exc})"
    # best_match: of several errors, the one a person (or the model) should fix first.
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(fmt.schema).iter_errors(value))
    if error is None:
        return value, ""
    path = "".join(f"/{p}" for p in error.absolute_path) or "/"
    return None, f"{path}: {error.message}"


def repair_prompt(mismatch: str) -> str:
    """The user message of the one retry after an answer that did not match."""
    return f"Your answer did not match the required JSON schema: {mismatch}. Answer again with JSON only."
