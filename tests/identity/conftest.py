"""Identity test fixtures: a signing key file for identity, a served identity, and helpers.

The shared `runtime` fixture serves the test keys as JWKS; identity's build() replaces that with
its own keys, which is what production does.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.rpc import error_details_pb2

from agentmesh.identity.v1 import identity_service_pb2 as pb
from agentmesh.identity.v1 import identity_service_pb2_grpc as pb_grpc
from services.identity.keys import KeySet, private_pem
from services.platform import errors
from services.platform.settings import Settings
from tests.conftest import _test_settings
from tests.helpers import bearer, sync_redis_client

PASSWORD = "correct horse battery"


@pytest.fixture(scope="session")
def identity_key_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("identity-keys") / "signing.pem"
    path.write_bytes(private_pem(Ed25519PrivateKey.generate()))
    return str(path)


@pytest.fixture
def settings(pg_url: str, redis_url: str, identity_key_file: str) -> Settings:
    base = _test_settings(pg_url, redis_url)
    auth = dataclasses.replace(base.auth, signing_key_file=identity_key_file, signup_open=True)
    return dataclasses.replace(base, auth=auth)


@pytest.fixture
def signer(identity_key_file: str) -> KeySet:
    """Identity's own key, to mint tokens with chosen claims."""
    return KeySet.load(identity_key_file)


@pytest.fixture(autouse=True)
def _clear_login_counters(redis_url: str) -> None:
    # Every test logs in from 127.0.0.1: start each with fresh failure counters.
    client = sync_redis_client(redis_url)
    keys = list(client.scan_iter("identity:login-fail:*"))
    if keys:
        client.delete(*keys)
    client.close()


@dataclasses.dataclass
class Account:
    tenant: pb.Tenant
    user: pb.User
    tokens: pb.AuthTokens
    password: str

    @property
    def md(self) -> tuple[tuple[str, str], ...]:
        return bearer(self.tokens.access_token)


class Identity:
    """A served identity: its stub plus helpers that create tenants and users."""

    def __init__(self, channel: grpc.aio.Channel, address: str):
        self.stub = pb_grpc.IdentityServiceStub(channel)
        self.address = address

    async def sign_up(self, *, username: str = "owner", password: str = PASSWORD) -> Account:
        name = f"t-{uuid.uuid4().hex[:12]}"
        reply = await self.stub.SignUp(
            pb.SignUpRequest(tenant_name=name, username=username, password=password, display_name="Owner")
        )
        return Account(reply.tenant, reply.user, reply.tokens, password)

    async def add_user(self, owner: Account, username: str, *roles: int, password: str = PASSWORD) -> Account:
        await self.stub.CreateUser(
            pb.CreateUserRequest(username=username, password=password, roles=list(roles)), metadata=owner.md
        )
        return await self.login(owner.tenant.name, username, password)

    async def login(self, tenant: str, username: str, password: str) -> Account:
        reply = await self.stub.Login(pb.LoginRequest(tenant=tenant, username=username, password=password))
        return Account(reply.tenant, reply.user, reply.tokens, password)


@pytest.fixture
async def identity(serve: Callable[..., Any]) -> Identity:
    running = await serve("identity")
    return Identity(running.channel, running.address)


def field_violations(error: grpc.aio.AioRpcError) -> list[str]:
    exc = errors.from_rpc_error(error)
    assert isinstance(exc, errors.InvalidArgument), exc
    return [v.field for v in exc.violations]


def retry_delay(error: grpc.aio.AioRpcError) -> float:
    proto = errors.status_proto_of(error)
    for detail in proto.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToNanoseconds() / 1e9
    raise AssertionError("no RetryInfo in the status")
