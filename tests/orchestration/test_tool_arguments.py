"""The loop's argument check: what reaches a tool and what goes back to the model instead."""

from __future__ import annotations

from services.orchestration.tools.arguments import check_arguments

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city"],
    "additionalProperties": False,
}


def test_arguments_that_match_are_parsed():
    checked = check_arguments("weather", '{"city": "Paris", "days": 2}', SCHEMA)
    assert checked.arguments == {"city": "Paris", "days": 2} and checked.error == ""


def test_an_empty_text_is_an_empty_object_and_no_schema_takes_any_object():
    assert check_arguments("ping", "", {}).arguments == {}
    assert check_arguments("ping", '{"x": [1]}', {}).arguments == {"x": [1]}


def test_each_refusal_names_the_tool_and_why():
    cases = {
        "{city": "not valid JSON",
        "[1, 2]": "must be a JSON object, got list",
        '{"days": 2}': "at /: 'city' is a required property",
        '{"city": "Paris", "days": 0}': "at /days: 0 is less than the minimum of 1",
        '{"city": 5}': "at /city: 5 is not of type 'string'",
        '{"city": "Paris", "extra": 1}': "at /: Additional properties are not allowed",
    }
    for text, why in cases.items():
        checked = check_arguments("weather", text, SCHEMA)
        assert checked.arguments is None, text
        assert checked.error.startswith("arguments of tool 'weather' refused: "), checked.error
        assert why in checked.error, (text, checked.error)
