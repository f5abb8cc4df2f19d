import pytest

from services.platform import errors
from services.platform.pagination import PageTokens, keyset, page_size, paginate, position


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


async def test_paginate_walks_every_row_once_and_scopes_its_tokens():
    tokens = PageTokens(b"secret")
    rows = [(t, f"id{t}") for t in range(7)]

    async def fetch(after: tuple[int, str] | None, limit: int) -> list[tuple[int, str]]:
        return [r for r in rows if after is None or r > after][:limit]

    seen: list[tuple[int, str]] = []
    token = ""
    pages = 0
    while True:
        page = await paginate(
            tokens,
            ("things", "t1", None),
            page_size=3,
            page_token=token,
            parse=keyset,
            fetch=fetch,
            cursor_of=lambda r: list(r),
        )
        seen += page.items
        pages += 1
        token = page.next_page_token
        if not token:
            break
        # A token is bound to its scope: another tenant or filter cannot use it.
        with pytest.raises(errors.InvalidArgument) as caught:
            await paginate(
                tokens,
                ("things", "t2", None),
                page_size=3,
                page_token=token,
                parse=keyset,
                fetch=fetch,
                cursor_of=lambda r: list(r),
            )
        assert caught.value.violations[0].field == "page_token"
    assert seen == rows and pages == 3


async def test_paginate_clamps_and_rejects_negative_sizes_and_foreign_cursors():
    tokens = PageTokens(b"secret")
    limits: list[int] = []

    async def fetch(after: int | None, limit: int) -> list[int]:
        limits.append(limit)
        return list(range(limit))

    page = await paginate(
        tokens,
        ("n",),
        page_size=10**6,
        page_token="",
        parse=position,
        fetch=fetch,
        cursor_of=lambda n: n,
        maximum=100,
    )
    assert len(page.items) == 100 and limits == [101] and page.next_page_token
    page = await paginate(
        tokens, ("n",), page_size=0, page_token="", parse=position, fetch=fetch, cursor_of=lambda n: n
    )
    assert len(page.items) == 50
    with pytest.raises(errors.InvalidArgument) as caught:
        await paginate(
            tokens, ("n",), page_size=-1, page_token="", parse=position, fetch=fetch, cursor_of=lambda n: n
        )
    assert caught.value.violations[0].field == "page_size"

    # A validly signed token of the same scope whose cursor has another shape (a keyset pair).
    async def pairs(after: tuple[int, str] | None, limit: int) -> list[tuple[int, str]]:
        return [(1, "a"), (2, "b")][:limit]

    foreign = (
        await paginate(tokens, ("n",), page_size=1, page_token="", parse=keyset, fetch=pairs, cursor_of=list)
    ).next_page_token
    with pytest.raises(errors.InvalidArgument) as caught:
        await paginate(
            tokens,
            ("n",),
            page_size=5,
            page_token=foreign,
            parse=position,
            fetch=fetch,
            cursor_of=lambda n: n,
        )
    assert caught.value.violations[0].field == "page_token"
    assert len(limits) == 2  # neither bad request reached the store


def test_cursor_parsers():
    assert keyset([5, "a"]) == (5, "a")
    assert position(3) == 3
    for bad in (None, [5], ["5", "a"], [True, "a"], [5, 6], {"a": 1}):
        with pytest.raises(ValueError):
            keyset(bad)
    for bad in (-1, "3", True, 1.5, [1]):
        with pytest.raises(ValueError):
            position(bad)
