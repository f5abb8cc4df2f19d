"""GET /v1/usage as CSV: a real conversation server on PostgreSQL behind the gateway in-process.
The CSV, read back with the csv module, equals the JSON rows and totals."""

from __future__ import annotations

import csv
import datetime
import io
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from gateway import create_app
from services.platform.settings import Settings
from tests.conftest import TestKeys as Keys

CSV = {"Accept": "text/csv"}
SUMS = ["messages", "promptTokens", "completionTokens", "totalTokens", "toolCalls", "costMicros"]
BY_AGENT_AND_DAY = {"groupBy": ["USAGE_GROUPING_AGENT", "USAGE_GROUPING_DAY"]}


@pytest.fixture
async def gateway(serve: Callable[..., Any], settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    running = await serve("conversation")
    app = create_app(settings, channels={"conversation": running.channel})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        yield client


@pytest.fixture
def tenant() -> str:
    return f"tenant-{uuid.uuid4().hex[:8]}"


def bearer(keys: Keys, tenant: str, user: str, roles: tuple[str, ...] = ("member",)) -> dict[str, str]:
    return {"Authorization": f"Bearer {keys.token(tenant=tenant, sub=user, roles=roles)}"}


async def answer(
    gw: httpx.AsyncClient, auth: dict[str, str], agent: str, prompt: int, completion: int, model: str
) -> None:
    """An assistant message with usage in a new conversation with `agent`, over the gateway."""
    created = await gw.post("/v1/conversations", json={"agentId": agent}, headers=auth)
    assert created.status_code == 200, created.text
    usage = {"promptTokens": prompt, "completionTokens": completion, "model": model, "toolCalls": 1}
    message = {"role": "MESSAGE_ROLE_ASSISTANT", "content": "an answer", "usage": usage}
    conv_id = created.json()["conversation"]["id"]
    appended = await gw.post(f"/v1/conversations/{conv_id}/messages", json=message, headers=auth)
    assert appended.status_code == 200, appended.text


def read_csv(r: httpx.Response) -> list[list[str]]:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    assert r.headers["content-disposition"] == 'attachment; filename="usage.csv"'
    return list(csv.reader(io.StringIO(r.text)))


def as_csv(body: dict[str, Any], header: list[str]) -> list[list[str]]:
    """The JSON rows and totals laid out as the CSV must be."""
    rows = [[str(row[name]) for name in header] for row in body["rows"]]
    totals = ["total", *(str(body["totals"][name]) for name in header[1:])]
    return [header, *rows, totals]


async def test_grouped_by_agent_and_day_the_csv_equals_the_json(
    gateway: httpx.AsyncClient, keys: Keys, tenant: str
) -> None:
    await answer(gateway, bearer(keys, tenant, "alice"), "agent-1", 10, 20, "echo:x")
    await answer(gateway, bearer(keys, tenant, "alice"), "agent-1", 1, 2, "echo:y")
    await answer(gateway, bearer(keys, tenant, "bob"), "agent-2", 100, 200, "echo:x")
    owner = bearer(keys, tenant, "olga", roles=("owner",))

    as_json = await gateway.get("/v1/usage", params=BY_AGENT_AND_DAY, headers=owner)
    assert as_json.status_code == 200 and as_json.headers["content-type"] == "application/json"
    body = as_json.json()
    assert [(row["agentId"], row["totalTokens"]) for row in body["rows"]] == [
        ("agent-1", "33"),
        ("agent-2", "300"),
    ]
    r = await gateway.get("/v1/usage", params=BY_AGENT_AND_DAY, headers={**owner, **CSV})
    lines = read_csv(r)
    assert lines == as_csv(body, ["agentId", "day", *SUMS])
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    assert [line[:2] for line in lines[1:]] == [["agent-1", today], ["agent-2", today], ["total", ""]]
    # Both forms of the one URL say they depend on Accept and Origin (CORS), in one Vary, for caches.
    for response in (r, as_json):
        assert response.headers.get_list("vary") == ["Accept, Origin"]

    # The key columns follow the contract's order whatever order the query names them in.
    swapped = {"groupBy": ["USAGE_GROUPING_DAY", "USAGE_GROUPING_AGENT"]}
    assert read_csv(await gateway.get("/v1/usage", params=swapped, headers={**owner, **CSV})) == lines
    # text/csv preferred by q-value is CSV; JSON preferred, or a tie, stays JSON.
    for accept, media in [
        ("application/json;q=0.5, text/csv", "text/csv; charset=utf-8"),
        ("text/csv, */*;q=0.1", "text/csv; charset=utf-8"),
        ("text/csv;q=0.2, application/json", "application/json"),
        ("text/csv, application/json", "application/json"),
    ]:
        got = await gateway.get("/v1/usage", params=BY_AGENT_AND_DAY, headers={**owner, "Accept": accept})
        assert got.headers["content-type"] == media, accept


async def test_without_grouping_every_key_is_a_column_and_no_match_is_the_totals_line_alone(
    gateway: httpx.AsyncClient, keys: Keys, tenant: str
) -> None:
    alice = bearer(keys, tenant, "alice")
    await answer(gateway, alice, "agent-1", 10, 20, "echo:x")
    await answer(gateway, alice, "agent-2", 5, 5, "echo:x")
    body = (await gateway.get("/v1/usage", headers=alice)).json()
    # GetUsage without group_by groups by all four keys, so the CSV has all four key columns.
    lines = read_csv(await gateway.get("/v1/usage", headers={**alice, **CSV}))
    assert lines == as_csv(body, ["userId", "agentId", "model", "day", *SUMS])
    assert len(lines) == 4 and lines[-1][4] == "2"  # two rows, two messages in the totals

    nothing = read_csv(
        await gateway.get("/v1/usage", params={"model": "echo:none"}, headers={**alice, **CSV})
    )
    assert nothing == [
        ["userId", "agentId", "model", "day", *SUMS],
        ["total", "", "", "", *["0"] * len(SUMS)],
    ]


async def test_a_key_that_would_run_as_a_formula_is_quoted(
    gateway: httpx.AsyncClient, keys: Keys, tenant: str
) -> None:
    alice = bearer(keys, tenant, "alice")
    await answer(gateway, alice, "agent-1", 1, 1, "=1+1")
    params = {"groupBy": "USAGE_GROUPING_MODEL"}
    assert (await gateway.get("/v1/usage", params=params, headers=alice)).json()["rows"][0]["model"] == "=1+1"
    lines = read_csv(await gateway.get("/v1/usage", params=params, headers={**alice, **CSV}))
    assert [line[0] for line in lines] == ["model", "'=1+1", "total"]


@pytest.mark.parametrize(
    ("grouping", "field"),
    [("USAGE_GROUPING_NOPE", "group_by"), ("USAGE_GROUPING_UNSPECIFIED", "group_by[0]")],
)
async def test_a_bad_grouping_is_the_json_400_even_when_csv_is_asked_for(
    gateway: httpx.AsyncClient, keys: Keys, tenant: str, grouping: str, field: str
) -> None:
    # The first is refused by the gateway's transcoding, the second by the conversation service.
    r = await gateway.get(
        "/v1/usage", params={"groupBy": grouping}, headers={**bearer(keys, tenant, "a"), **CSV}
    )
    assert r.status_code == 400 and r.headers["content-type"] == "application/json"
    assert "content-disposition" not in r.headers
    body = r.json()
    assert body["status"] == "INVALID_ARGUMENT"
    violations = [v for d in body["details"] for v in d.get("fieldViolations", [])]
    assert field in [v["field"] for v in violations], body


async def test_the_openapi_document_lists_text_csv_for_get_usage_only(gateway: httpx.AsyncClient) -> None:
    paths = (await gateway.get("/openapi.json")).json()["paths"]
    content = paths["/v1/usage"]["get"]["responses"]["200"]["content"]
    assert list(content) == ["application/json", "text/csv"]
    assert content["text/csv"]["schema"]["type"] == "string"
    others = [
        path
        for path, item in paths.items()
        for op in item.values()
        if isinstance(op, dict) and "text/csv" in op.get("responses", {}).get("200", {}).get("content", {})
    ]
    assert others == ["/v1/usage"]
