"""`agentmesh admin` as an operator runs it (a subprocess), on the embedded data dir (SQLite, beside a
running `agentmesh up`) and on PostgreSQL (DATABASE_URL, beside an identity served here): the tier
is the operator's, and tokens issued after `set-tier` carry the new one. The tenant's own routes to
the tier (gRPC UpdateTenant, HTTP PATCH /v1/tenant) are refused."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agentmesh.conversation.v1 import conversation_service_pb2 as conv_pb
from agentmesh.conversation.v1 import conversation_service_pb2_grpc as conv_grpc
from agentmesh.identity.v1 import identity_service_pb2 as pb
from agentmesh.identity.v1 import identity_service_pb2_grpc as pb_grpc
from services.identity.keys import private_pem
from services.platform.settings import Settings
from tests.conftest import fresh_database
from tests.embedded import BIN, run_embedded
from tests.helpers import bearer, build_runtime, start_server

PASSWORD = "operator-chosen-secret"


def admin(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AGENTMESH_") and k not in ("DATABASE_URL", "REDIS_URL")
    }
    return subprocess.run(
        [str(BIN / "agentmesh"), "admin", *args],
        env={**clean, **(env or {})},
        input=stdin,
        stdin=subprocess.DEVNULL if stdin is None else None,
        capture_output=True,
        text=True,
        timeout=60,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def tier_of(access_token: str) -> str:
    return str(jwt.decode(access_token, options={"verify_signature": False})["tier"])


def generated_password(stdout: str) -> str:
    line = next(line for line in stdout.splitlines() if "shown once" in line)
    return line.rsplit(" ", 1)[1]


def test_embedded_data_dir(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    where = ("--data-dir", data)
    # The operator creates the first tenant before `up` ever ran; the password comes from stdin.
    ok(
        admin(
            "tenants", "create", "acme", "--tier", "free", "--owner", "alice", *where, stdin=PASSWORD + "\n"
        )
    )
    # Without a piped password one is generated and printed once.
    printed = ok(admin("tenants", "create", "beta", "--tier", "pro", "--owner", "bob", *where))
    bob_password = generated_password(printed)
    taken = admin("tenants", "create", "acme", "--tier", "pro", "--owner", "eve", *where, stdin=PASSWORD)
    assert (taken.returncode, "taken" in taken.stderr) == (1, True)

    with run_embedded(Path(data)) as running, grpc.insecure_channel(running.grpc_target) as channel:
        stub = pb_grpc.IdentityServiceStub(channel)

        def login(tenant: str, user: str, password: str) -> pb.LoginResponse:
            return stub.Login(pb.LoginRequest(tenant=tenant, username=user, password=password), timeout=10)

        alice = login("acme", "alice", PASSWORD)
        assert tier_of(alice.tokens.access_token) == "free"
        assert tier_of(login("beta", "bob", bob_password).tokens.access_token) == "pro"

        # The owner's own routes to the tier: gRPC and HTTP through the gateway.
        with pytest.raises(grpc.RpcError) as denied:
            stub.UpdateTenant(
                pb.UpdateTenantRequest(
                    tenant=pb.Tenant(tier=pb.TIER_ENTERPRISE), update_mask={"paths": ["tier"]}
                ),
                metadata=bearer(alice.tokens.access_token),
                timeout=10,
            )
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        patch = httpx.patch(
            f"{running.http_url}/v1/tenant?updateMask=tier",
            json={"tier": "TIER_ENTERPRISE"},
            headers={"Authorization": f"Bearer {alice.tokens.access_token}"},
            timeout=10,
        )
        assert patch.status_code == 403, patch.text
        tenant = httpx.get(
            f"{running.http_url}/v1/tenant",
            headers={"Authorization": f"Bearer {alice.tokens.access_token}"},
            timeout=10,
        ).json()["tenant"]
        assert tenant["tier"] == "TIER_FREE"

        # The operator raises the tier while `up` runs; the next token carries it.
        ok(admin("tenants", "set-tier", "acme", "enterprise", *where))
        again = login("acme", "alice", PASSWORD)
        assert tier_of(again.tokens.access_token) == "enterprise"
        me = stub.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(again.tokens.access_token), timeout=10)
        assert me.tier == pb.TIER_ENTERPRISE

        ok(admin("users", "reset-password", "acme", "alice", *where, stdin="a-brand-new-secret\n"))
        with pytest.raises(grpc.RpcError) as old:
            login("acme", "alice", PASSWORD)
        assert old.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert login("acme", "alice", "a-brand-new-secret").user.username == "alice"

    listed = ok(admin("tenants", "list", *where)).splitlines()
    rows = {line.split()[0]: line.split()[1] for line in listed[1:]}
    assert {"acme": "enterprise", "beta": "pro"}.items() <= rows.items()
    assert "demo" in rows  # `up` seeded its demo tenant into the same database


@pytest.fixture
def settings(pg_url: str, redis_url: str, tmp_path: Path) -> Settings:
    """The session's PostgreSQL and Redis, and a signing key, for an identity served here."""
    from tests.conftest import _test_settings

    key = tmp_path / "signing.pem"
    key.write_bytes(private_pem(Ed25519PrivateKey.generate()))
    base = _test_settings(pg_url, redis_url)
    return dataclasses.replace(base, auth=dataclasses.replace(base.auth, signing_key_file=str(key)))


async def test_postgresql(settings: Settings, serve: Callable[..., Any], pg_url: str, redis_url: str) -> None:
    env = {"DATABASE_URL": pg_url, "REDIS_URL": redis_url}
    name = f"op-{uuid.uuid4().hex[:10]}"
    ok(admin("tenants", "create", name, "--tier", "free", "--owner", "carol", env=env, stdin=PASSWORD))
    running = await serve("identity")
    stub = pb_grpc.IdentityServiceStub(running.channel)
    signed_in = await stub.Login(pb.LoginRequest(tenant=name, username="carol", password=PASSWORD))
    assert tier_of(signed_in.tokens.access_token) == "free"

    assert "is on tier pro" in ok(admin("tenants", "set-tier", name, "pro", env=env))
    refreshed = await stub.RefreshToken(pb.RefreshTokenRequest(refresh_token=signed_in.tokens.refresh_token))
    assert tier_of(refreshed.tokens.access_token) == "pro"
    assert any(
        line.split()[:2] == [name, "pro"] for line in ok(admin("tenants", "list", env=env)).splitlines()
    )

    # Reset: the password changes and the user's sessions end (the refresh token, and the access
    # token through the revocation mark in the shared Redis).
    ok(admin("users", "reset-password", name, "carol", env=env, stdin="carol-new-secret"))
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await stub.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(refreshed.tokens.access_token))
    assert stale.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as spent:
        await stub.RefreshToken(pb.RefreshTokenRequest(refresh_token=refreshed.tokens.refresh_token))
    assert spent.value.code() == grpc.StatusCode.UNAUTHENTICATED
    await stub.Login(pb.LoginRequest(tenant=name, username="carol", password="carol-new-secret"))


@pytest.mark.parametrize(
    ("args", "env", "code", "says"),
    [
        (("tenants", "list"), {}, 2, "DATABASE_URL is not set"),
        (("tenants", "set-tier", "no-such-tenant", "pro"), None, 1, "not found"),
        (("tenants", "set-tier", "x", "platinum"), None, 2, "invalid choice"),
        (("tenants", "create", "Bad Name", "--tier", "pro", "--owner", "o"), None, 1, "name"),
        (("users", "reset-password", "no-such-tenant", "o"), None, 1, "not found"),
    ],
)
def test_refusals(
    args: tuple[str, ...], env: dict[str, str] | None, code: int, says: str, pg_url: str, redis_url: str
) -> None:
    env = {"DATABASE_URL": pg_url, "REDIS_URL": redis_url} if env is None else env
    result = admin(*args, env=env, stdin="some-long-password")
    assert (result.returncode, says in result.stderr) == (code, True), result.stderr


@pytest.fixture(params=["shared", "split"])
def layout(
    request: pytest.FixtureRequest, pg_url: str, redis_url: str
) -> Iterator[tuple[dict[str, str], str]]:
    """(the operator's environment, conversation's database): one database for every service
    (DATABASE_URL), or identity and conversation each in a database of its own that holds only its
    tables (so a command reading the wrong one fails)."""
    if request.param == "shared":
        yield {"DATABASE_URL": pg_url, "REDIS_URL": redis_url}, pg_url
        return
    with fresh_database(["identity"]) as identity_db, fresh_database(["conversation"]) as conversation_db:
        env = {
            "AGENTMESH_IDENTITY_DATABASE_URL": identity_db,
            "AGENTMESH_CONVERSATION_DATABASE_URL": conversation_db,
            "REDIS_URL": redis_url,
        }
        yield env, conversation_db


def _tables(url: str) -> set[str]:
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1)) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {row[0] for row in rows}


async def test_prices_quota_and_usage(
    layout: tuple[dict[str, str], str], settings: Settings, keys: Any
) -> None:
    env, conversation_db = layout
    name = f"use-{uuid.uuid4().hex[:10]}"
    created = ok(
        admin("tenants", "create", name, "--tier", "free", "--owner", "dora", env=env, stdin=PASSWORD)
    )
    tenant_id = created.split("id ", 1)[1].split(")", 1)[0]
    model = f"echo:{name}"
    assert "per million tokens" in ok(
        admin("prices", "set", model, "--input", "2.5", "--output", "10", env=env)
    )
    if "DATABASE_URL" in env:  # the listing reads what the usage below reads: once is enough
        listed = ok(admin("prices", "list", env=env))
        assert any(line.split()[:3] == [model, "2.5", "10"] for line in listed.splitlines()), listed
    assert "1000 tokens a month" in ok(admin("tenants", "set-quota", name, "--tokens", "1000", env=env))

    # Conversation serves from its own database, as its process would.
    runtime = await build_runtime(dataclasses.replace(settings, database_url=conversation_db), keys)
    running = await start_server(runtime, "conversation")
    try:
        await _spend_and_read(running.channel, env, name, tenant_id, model, keys)
    finally:
        await running.close()
        await runtime.close()
    if "AGENTMESH_IDENTITY_DATABASE_URL" in env:
        identity_db = env["AGENTMESH_IDENTITY_DATABASE_URL"]
        assert "identity_tenants" in _tables(identity_db) and "model_prices" not in _tables(identity_db)
        assert "model_prices" in _tables(conversation_db) and "identity_tenants" not in _tables(
            conversation_db
        )
        # A command on conversation's tables with only identity's database named: refused, saying which.
        only_identity = {k: v for k, v in env.items() if k != "AGENTMESH_CONVERSATION_DATABASE_URL"}
        refused = admin("prices", "list", env=only_identity)
        assert (refused.returncode, "AGENTMESH_CONVERSATION_DATABASE_URL" in refused.stderr) == (2, True), (
            refused.stderr
        )


async def _spend_and_read(
    channel: grpc.aio.Channel, env: dict[str, str], name: str, tenant_id: str, model: str, keys: Any
) -> None:
    stub = conv_grpc.ConversationServiceStub(channel)
    auth = bearer(keys.token(tenant=tenant_id, sub="dora", roles=("owner",), tier="free"))
    conv = (
        await stub.CreateConversation(conv_pb.CreateConversationRequest(agent_id="a1"), metadata=auth)
    ).conversation
    usage = conv_pb.MessageUsage(prompt_tokens=1000, completion_tokens=200, model=model)
    await stub.AppendMessage(
        conv_pb.AppendMessageRequest(
            conversation_id=conv.id,
            message=conv_pb.Message(role=conv_pb.MESSAGE_ROLE_ASSISTANT, content="x", usage=usage),
        ),
        metadata=auth,
    )
    printed = ok(admin("usage", name, "--group-by", "model", env=env)).splitlines()
    assert printed[0].split() == [
        "user_id",
        "agent_id",
        "model",
        "day",
        "messages",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "tool_calls",
        "cost_micros",
    ]
    # The model row and the totals row: 1 message, 1000 + 200 tokens, 2500 + 2000 micro-units.
    assert printed[1].split() == [model, "1", "1000", "200", "1200", "0", "4500"]
    assert printed[2].split() == ["TOTAL", "1", "1000", "200", "1200", "0", "4500"]
    assert "1200 of 1000 tokens" in printed[3]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.CheckQuota(conv_pb.CheckQuotaRequest(), metadata=auth)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    if "DATABASE_URL" not in env:
        return  # what follows does not depend on where the tables are (each admin run costs seconds)
    # Another month has none of it.
    assert ok(admin("usage", name, "--month", "2020-01", env=env)).splitlines()[1].split()[:2] == [
        "TOTAL",
        "0",
    ]
    bad = admin("usage", name, "--month", "2020-13", env=env)
    assert (bad.returncode, "month" in bad.stderr) == (1, True), bad.stderr
    bad = admin("prices", "set", model, "--input", "-1", "--output", "1", env=env)
    assert (bad.returncode, "input" in bad.stderr) == (1, True), bad.stderr
