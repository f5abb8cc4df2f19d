import pytest

from services.platform import errors
from services.platform.validation import (
    MAX_ID_CHARS,
    MAX_REQUEST_ID_CHARS,
    Violations,
    require_id,
    require_request_id,
)


def test_violations_collect_every_field_and_raise_once():
    v = Violations()
    v.id("", "agent_id")
    v.id("x" * (MAX_ID_CHARS + 1), "session_id")
    v.request_id("r" * (MAX_REQUEST_ID_CHARS + 1))
    v.check(False, "title", "is too long")
    with pytest.raises(errors.InvalidArgument) as caught:
        v.raise_if_any()
    assert [f.field for f in caught.value.violations] == ["agent_id", "session_id", "request_id", "title"]
    assert caught.value.violations[0].description == "is required"


def test_limits_are_inclusive_and_empty_request_id_is_allowed():
    require_id("x" * MAX_ID_CHARS, "agent_id")
    require_request_id("r" * MAX_REQUEST_ID_CHARS)
    require_request_id("")
    Violations().raise_if_any()  # nothing collected, nothing raised
    with pytest.raises(errors.InvalidArgument) as caught:
        require_request_id("r" * (MAX_REQUEST_ID_CHARS + 1), "tool.request_id")
    assert caught.value.violations[0].field == "tool.request_id"
    with pytest.raises(errors.InvalidArgument):
        require_id("", "run_id")
