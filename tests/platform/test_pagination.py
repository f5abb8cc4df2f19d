import pytest

from services.platform import errors
from services.platform.pagination import PageTokens, page_size


def test_page_size_rules():
    assert page_size(0) == 50
    assert page_size(7) == 7
    assert page_size(10**6) == 1000
    with pytest.raises(errors.InvalidArgument) as caught:
        page_size(-1)
    assert caught.value.violations[0].field == "page_size"


def test_page_token_round_trip_and_tamper_evidence():
    tokens = PageTokens(b"secret")
    token = tokens.encode("ListAgents|state=1", {"after": ["2026-01-01", "a-1"]})
    assert tokens.decode("ListAgents|state=1", token) == {"after": ["2026-01-01", "a-1"]}
    assert tokens.decode("ListAgents|state=1", "") is None
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    for bad in (flipped, "garbage!!", token + "x", "A" * 10):
        with pytest.raises(errors.InvalidArgument):
            tokens.decode("ListAgents|state=1", bad)
    with pytest.raises(errors.InvalidArgument):  # a token from another listing or filter
        tokens.decode("ListAgents|state=2", token)
    with pytest.raises(errors.InvalidArgument):  # signed with another secret
        PageTokens(b"other").decode("ListAgents|state=1", token)
