"""The canonical gRPC-to-HTTP table, the error body, and bad input that must never be a 500."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

CODES = [
    ("INVALID_ARGUMENT", 400),
    ("FAILED_PRECONDITION", 400),
    ("OUT_OF_RANGE", 400),
    ("UNAUTHENTICATED", 401),
    ("PERMISSION_DENIED", 403),
    ("NOT_FOUND", 404),
    ("ABORTED", 409),
    ("ALREADY_EXISTS", 409),
    ("RESOURCE_EXHAUSTED", 429),
    ("CANCELLED", 499),
    ("UNIMPLEMENTED", 501),
    ("UNAVAILABLE", 503),
    ("DEADLINE_EXCEEDED", 504),
    ("INTERNAL", 500),
    ("UNKNOWN", 500),
    ("DATA_LOSS", 500),
]


@pytest.mark.parametrize(("code", "http"), CODES)
async def test_each_code_maps_to_its_http_status(
    client: httpx.AsyncClient, auth: dict[str, str], code: str, http: int
) -> None:
    r = await client.get(f"/v1/agents/err-{code}", headers=auth)
    assert r.status_code == http, r.text
    body = r.json()
    assert body["status"] == code and isinstance(body["code"], int) and body["message"]
    assert isinstance(body["details"], list)


async def test_details_are_rendered_as_json(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    body = (await client.get("/v1/agents/err-INVALID_ARGUMENT", headers=auth)).json()
    types = {d["@type"].rsplit("/", 1)[-1]: d for d in body["details"]}
    assert types["google.rpc.ErrorInfo"]["reason"] == "INVALID_ARGUMENT"
    assert types["google.rpc.BadRequest"]["fieldViolations"] == [{"field": "agent_id", "description": "bad"}]


async def test_resource_exhausted_has_retry_after(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    r = await client.get("/v1/agents/err-RESOURCE_EXHAUSTED", headers=auth)
    assert r.status_code == 429 and r.headers["retry-after"] == "3"
    assert any(d["@type"].endswith("google.rpc.RetryInfo") for d in r.json()["details"])


async def test_missing_token_is_401(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/agents")
    assert r.status_code == 401 and r.json()["status"] == "UNAUTHENTICATED"


async def test_bad_token_is_401(client: httpx.AsyncClient, keys: Any) -> None:
    expired = keys.token(ttl=-60)
    for header in ("Bearer not-a-jwt", f"Bearer {expired}"):
        r = await client.get("/v1/agents", headers={"Authorization": header})
        assert r.status_code == 401, r.text


async def test_unknown_route_is_404_json(client: httpx.AsyncClient) -> None:
    for path in ("/v1/nothing", "/v2/agents", "/v1/agents/a/b/c/d"):
        r = await client.get(path)
        assert r.status_code == 404 and r.json()["status"] == "NOT_FOUND"


async def test_wrong_method_is_405_json_with_allow(client: httpx.AsyncClient) -> None:
    r = await client.put("/v1/agents/x")
    assert r.status_code == 405 and set(r.headers["allow"].split(", ")) == {"GET", "PATCH", "DELETE"}
    assert r.json()["message"]
    r = await client.request("TRACE", "/v1/agents")
    assert r.status_code == 405 and r.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        (b"[1, 2]", "body"),
        (b'"text"', "body"),
        (b'{"agent": {"displayName": "x", "nope": 1}}', "agent.nope"),
        (b'{"agent": {"displayName": 5}}', "displayName"),
        (b'{"agent": {"version": "seven"}}', "version"),
        (b'{"agent": {"state": "NOT_A_STATE"}}', "state"),
        (b'{"agent": "flat"}', "agent"),
        (b'{"unknownTop": true}', "unknownTop"),
        (b"\xff\xfe", "body"),
    ],
)
async def test_bad_bodies_are_400_naming_the_field(
    client: httpx.AsyncClient, auth: dict[str, str], fakes: Any, body: bytes, field: str
) -> None:
    r = await client.post("/v1/agents", content=body, headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    violation = r.json()["details"][0]["fieldViolations"][0]
    assert field in violation["field"] or field in violation["description"], violation
    assert not fakes.agents.agents


@pytest.mark.parametrize(
    "query",
    ["page_size=abc", "page_size=1.5", "page_size=99999999999999", "nope=1", "state=WRONG", "page_size"],
)
async def test_bad_query_parameters_are_400(
    client: httpx.AsyncClient, auth: dict[str, str], query: str
) -> None:
    r = await client.get(f"/v1/agents?{query}", headers=auth)
    assert r.status_code == 400, r.text
    assert r.json()["details"][0]["fieldViolations"]


async def test_bad_bool_and_path_int_are_400(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    assert (await client.get("/v1/agents:watch?all_tenants=yes", headers=auth)).status_code == 400
    assert (await client.get("/v1/agents/a/versions/seven", headers=auth)).status_code == 400


async def test_body_on_a_get_is_400(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    r = await client.request("GET", "/v1/agents", content=b'{"a": 1}', headers=auth)
    assert r.status_code == 400


async def test_oversized_body_is_413(make_app: Any, auth: dict[str, str], fakes: Any) -> None:
    app = make_app(max_body_bytes=1000)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        big = {"agent": {"displayName": "x" * 2000}}
        r = await c.post("/v1/agents", json=big, headers=auth)
        assert r.status_code == 413 and r.json()["message"]

        async def chunks():  # no Content-Length: counted while reading
            for _ in range(20):
                yield b" " * 100

        r = await c.post("/v1/agents", content=chunks(), headers=auth)
        assert r.status_code == 413
    assert not fakes.agents.agents


async def test_unreachable_upstream_is_503(settings: Any, auth: dict[str, str]) -> None:
    import dataclasses

    from gateway import create_app

    peers = dataclasses.replace(settings.peers, agents="127.0.0.1:1")
    app = create_app(dataclasses.replace(settings, peers=peers))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        r = await c.get("/v1/agents", headers={**auth, "Grpc-Timeout": "2S"})
        assert r.status_code in (503, 504) and r.json()["status"] in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
        r = await c.get("/v1/sessions", headers=auth)  # no address configured at all
        assert r.status_code == 503
        ready = await c.get("/readyz")
        assert ready.status_code == 503
        await app.state.gateway.upstreams.close()


async def test_security_headers_and_cors(make_app: Any) -> None:
    app = make_app(cors_origins=("http://allowed.example",))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        r = await c.get("/healthz")
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert r.headers["referrer-policy"] == "no-referrer"
        pre = {"Origin": "http://allowed.example", "Access-Control-Request-Method": "POST"}
        r = await c.options("/v1/agents", headers=pre)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://allowed.example"
        r = await c.options("/v1/agents", headers={**pre, "Origin": "http://evil.example"})
        assert r.status_code == 400 and "access-control-allow-origin" not in r.headers


async def test_every_response_has_the_security_headers_and_varies_on_origin(
    make_app: Any, auth: dict[str, str]
) -> None:
    """Fixed paths, transcoded routes, the gateway's own errors and CORS preflights alike, with and
    without an Origin."""
    app = make_app(cors_origins=("http://allowed.example",))
    allowed = {"Origin": "http://allowed.example"}
    preflight = {**allowed, "Access-Control-Request-Method": "GET"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        answers = {
            "fixed": await c.get("/healthz"),
            "transcoded": await c.get("/v1/agents", headers=auth),
            "no route": await c.get("/v1/nothing/here"),
            "fixed path, other verb": await c.post("/healthz"),
            "other method": await c.request("OPTIONS", "/v1/agents"),
            "cross-origin": await c.get("/v1/agents", headers={**auth, **allowed}),
            "preflight": await c.options("/v1/agents", headers=preflight),
        }
    statuses = {name: r.status_code for name, r in answers.items()}
    assert statuses == {
        "fixed": 200,
        "transcoded": 200,
        "no route": 404,
        "fixed path, other verb": 404,
        "other method": 405,
        "cross-origin": 200,
        "preflight": 200,
    }
    for name, r in answers.items():
        assert r.headers["x-frame-options"] == "DENY", name
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"], name
        (vary,) = r.headers.get_list("vary")
        assert "Origin" in vary.split(", "), name
    assert answers["no route"].json()["status"] == "NOT_FOUND"
    assert answers["fixed path, other verb"].json()["status"] == "NOT_FOUND"
    cross = answers["cross-origin"]
    assert cross.headers["access-control-allow-origin"] == "http://allowed.example"
    assert "x-request-id" in cross.headers["access-control-expose-headers"]
    assert "access-control-allow-origin" not in answers["transcoded"].headers


async def test_no_cors_by_default(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    r = await client.get("/readyz")
    assert r.status_code == 200 and r.json()["ready"] is True
    assert set(r.json()["services"].values()) == {"SERVING"}
