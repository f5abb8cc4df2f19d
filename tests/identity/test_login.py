"""Login: no enumeration, throttling, argon2id storage and rehash; start-up rules (keys, demo data)."""

from __future__ import annotations

import dataclasses
import statistics
import time

import argon2
import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import field_mask_pb2

from agentmesh.identity.v1 import identity_service_pb2 as pb
from agentmesh.identity.v1 import identity_service_pb2_grpc as pb_grpc
from services import identity as identity_service
from services.identity.admin import TenantAdmin
from services.identity.keys import KeySet
from services.identity.passwords import Passwords
from services.identity.redis_state import LoginThrottle, Revocations, ThrottleLimits
from services.identity.service import IdentityService
from services.identity.servicer import PUBLIC_RPCS, IdentityServicer
from services.identity.sessions import Sessions
from services.identity.store import IdentityStore, users
from services.identity.tokens import TokenIssuer
from services.platform import migrations
from services.platform.runtime import Runtime, with_embedded_secrets
from services.platform.server import ServiceRegistration
from services.platform.settings import Settings, SettingsError
from tests.fakes.identity import FakeQuota
from tests.helpers import expect_status
from tests.identity.conftest import PASSWORD, Identity, field_violations, retry_delay


async def stored_hash(runtime, user_id: str) -> str:
    async with runtime.engine.connect() as conn:
        return (
            await conn.execute(sa.select(users.c.password_hash).where(users.c.id == user_id))
        ).scalar_one()


async def test_argon2id_parameters_are_in_the_stored_hash(identity, runtime):
    account = await identity.sign_up()
    stored = await stored_hash(runtime, account.user.id)
    assert stored.startswith("$argon2id$v=19$m=19456,t=3,p=1$")
    assert PASSWORD not in stored
    params = argon2.extract_parameters(stored)
    assert params.type is argon2.Type.ID
    assert (params.memory_cost, params.time_cost, params.parallelism) >= (19456, 2, 1)


async def test_weaker_hash_is_upgraded_at_login(identity, runtime):
    account = await identity.sign_up()
    weak = argon2.PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(PASSWORD)
    async with runtime.engine.begin() as conn:
        await conn.execute(users.update().where(users.c.id == account.user.id).values(password_hash=weak))
    await identity.login(account.tenant.name, "owner", PASSWORD)
    assert (await stored_hash(runtime, account.user.id)).startswith("$argon2id$v=19$m=19456,t=3,p=1$")
    assert await identity.login(account.tenant.name, "owner", PASSWORD)


async def test_failures_look_the_same(identity):
    account = await identity.sign_up()
    disabled = await identity.add_user(account, "gone")
    await identity.stub.UpdateUser(
        pb.UpdateUserRequest(
            user=pb.User(id=disabled.user.id, disabled=True),
            update_mask=field_mask_pb2.FieldMask(paths=["disabled"]),
        ),
        metadata=account.md,
    )
    cases = {
        "unknown tenant": ("no-such-tenant-xyz", "owner", PASSWORD),
        "unknown user": (account.tenant.name, "nobody", PASSWORD),
        "disabled user": (account.tenant.name, "gone", PASSWORD),
        "wrong password": (account.tenant.name, "owner", "not the password"),
    }
    timings: dict[str, list[float]] = {name: [] for name in cases}
    answers = set()
    for _ in range(5):
        for name, (tenant, username, password) in cases.items():
            start = time.perf_counter()
            error = await expect_status(identity.login(tenant, username, password))
            timings[name].append(time.perf_counter() - start)
            answers.add((error.code(), error.details()))
    assert answers == {(grpc.StatusCode.UNAUTHENTICATED, "invalid tenant, username or password")}
    medians = {name: statistics.median(t) for name, t in timings.items()}
    # Loose on purpose (shared machine): a miss that skipped argon2 would be ~10x faster.
    assert max(medians.values()) < 3 * min(medians.values()), medians


async def test_throttle_per_username(identity):
    account = await identity.sign_up()
    for _ in range(10):
        error = await expect_status(identity.login(account.tenant.name, "owner", "wrong password!"))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    error = await expect_status(identity.login(account.tenant.name, "owner", PASSWORD))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert 0 < retry_delay(error) <= 300
    # Only that username is held back, and only for the window (no lock-out flag is stored).
    other = await identity.add_user(account, "colleague")
    assert other.tokens.access_token


async def test_success_clears_the_username_counter(identity):
    account = await identity.sign_up()
    for _ in range(9):
        await expect_status(identity.login(account.tenant.name, "owner", "wrong password!"))
    await identity.login(account.tenant.name, "owner", PASSWORD)
    for _ in range(9):
        await expect_status(identity.login(account.tenant.name, "owner", "wrong password!"))
    assert await identity.login(account.tenant.name, "owner", PASSWORD)


def throttled_identity(runtime: Runtime, limits: ThrottleLimits) -> ServiceRegistration:
    """Identity as build() wires it, but with `limits` on its login throttle."""
    auth = runtime.settings.auth
    keys = KeySet.load(auth.signing_key_file)
    store = IdentityStore(runtime.engine)
    passwords = Passwords()
    revocations = Revocations(runtime.redis, access_ttl=auth.access_token_ttl_seconds)
    sessions = Sessions(
        store=store,
        tokens=TokenIssuer(
            keys=keys,
            issuer=auth.issuer,
            audience=auth.audience,
            access_ttl=auth.access_token_ttl_seconds,
            refresh_ttl=auth.refresh_token_ttl_seconds,
        ),
        revocations=revocations,
        clock=runtime.clock,
    )
    servicer = IdentityServicer(
        service=IdentityService(
            store=store,
            passwords=passwords,
            sessions=sessions,
            throttle=LoginThrottle(runtime.redis, limits),
            revocations=revocations,
            keys=keys,
            service_secret=auth.service_secret,
            clock=runtime.clock,
            signup_open=True,
            quota=FakeQuota(),
        ),
        admin=TenantAdmin(
            store=store,
            passwords=passwords,
            sessions=sessions,
            revocations=revocations,
            page_tokens=runtime.page_tokens,
            clock=runtime.clock,
        ),
    )
    name = identity_service.SERVICE_NAME
    return ServiceRegistration(
        name=name,
        add_to_server=lambda server: pb_grpc.add_IdentityServiceServicer_to_server(servicer, server),
        public_methods=frozenset(f"/{name}/{rpc}" for rpc in PUBLIC_RPCS),
    )


async def test_throttle_per_address(serve, runtime):
    registration = throttled_identity(
        runtime, ThrottleLimits(per_username=100, per_address=4, window_seconds=60)
    )
    running = await serve(registration)
    identity = Identity(running.channel, running.address)
    account = await identity.sign_up()
    for i in range(4):
        await expect_status(identity.login(account.tenant.name, f"guess{i}", PASSWORD))
    error = await expect_status(identity.login(account.tenant.name, "owner", PASSWORD))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert 0 < retry_delay(error) <= 60


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (pb.LoginRequest(tenant="", username="owner", password="x"), ["tenant"]),
        (pb.LoginRequest(tenant="Demo", username="user_1", password="x"), ["tenant"]),
        (pb.LoginRequest(tenant="demo", username="User_1", password="x"), ["username"]),
        (
            pb.LoginRequest(tenant="d" * 64, username="u" * 65, password=""),
            ["tenant", "username", "password"],
        ),
        (pb.LoginRequest(tenant="demo", username="user_1", password="p" * 1025), ["password"]),
    ],
)
async def test_malformed_login_is_invalid_argument(identity, request_, fields):
    error = await expect_status(identity.stub.Login(request_))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == fields


async def test_login_over_grpcurl(identity):
    import asyncio
    import json
    import pathlib
    import sys

    account = await identity.sign_up()
    grpcurl = pathlib.Path(sys.executable).parent / "grpcurl"
    body = json.dumps({"tenant": account.tenant.name, "username": "owner", "password": PASSWORD})
    proc = await asyncio.create_subprocess_exec(
        str(grpcurl),
        "-plaintext",
        "-d",
        body,
        identity.address,
        "agentmesh.identity.v1.IdentityService/Login",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    reply = json.loads(out)
    assert reply["user"]["id"] == account.user.id
    assert reply["tokens"]["token_type"] == "Bearer"
    assert reply["tokens"]["access_token"].count(".") == 2


async def test_production_refuses_to_start_without_key_or_secret(runtime):
    auth = runtime.settings.auth
    runtime.settings = dataclasses.replace(
        runtime.settings, auth=dataclasses.replace(auth, signing_key_file="")
    )
    with pytest.raises(SettingsError, match="AGENTMESH_SIGNING_KEY_FILE"):
        await identity_service.build(runtime)
    runtime.settings = dataclasses.replace(
        runtime.settings, auth=dataclasses.replace(auth, service_secret="")
    )
    with pytest.raises(SettingsError, match="AGENTMESH_SERVICE_SECRET"):
        await identity_service.build(runtime)


async def test_demo_data_only_in_embedded_mode(serve, runtime, tmp_path):
    # Production (the shared PostgreSQL runtime): build() creates nothing.
    running = await serve("identity")
    production = Identity(running.channel, running.address)
    error = await expect_status(production.login("demo", "user_1", "1234"))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED

    # Embedded: SQLite and in-process Redis in a data directory, key generated on first start.
    settings = with_embedded_secrets(
        Settings.from_env({}, data_dir=str(tmp_path), grpc_port=0).embedded_defaults()
    )
    embedded = await Runtime.create(settings)
    try:
        await migrations.upgrade(embedded.engine, ["identity"])
        assert not (tmp_path / "signing_key.pem").exists()
        await identity_service.build(embedded)
        assert (tmp_path / "signing_key.pem").stat().st_mode & 0o777 == 0o600
        key_before = (tmp_path / "signing_key.pem").read_bytes()
        await identity_service.build(embedded)  # idempotent: same key, no duplicate users
        assert (tmp_path / "signing_key.pem").read_bytes() == key_before
        store = IdentityStore(embedded.engine)
        tenant = await store.tenant_by_name("demo")
        assert tenant is not None and tenant.tier == "pro"
        listed = await store.list_users(tenant.id, after_username=None, limit=10, include_disabled=True)
        assert [(u.username, u.roles) for u in listed] == [("user_1", ("owner",)), ("user_2", ("member",))]
        verify = argon2.PasswordHasher().verify
        assert verify(listed[0].password_hash, "1234") and verify(listed[1].password_hash, "5678")
    finally:
        await embedded.close()
