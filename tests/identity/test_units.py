"""Unit tests without gRPC or a database: policy, parsing, keys, and refresh expiry with a fake store
and a fake clock."""

from __future__ import annotations

import dataclasses
import datetime

import fakeredis
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.identity.keys import KeySet, ensure_key_file, private_pem
from services.identity.models import RefreshRecord, Tenant, User
from services.identity.passwords import Passwords, check_policy
from services.identity.redis_state import LoginThrottle, Revocations, client_address
from services.identity.service import IdentityService
from services.identity.sessions import Sessions
from services.identity.tokens import TokenIssuer, token_time
from services.platform import errors
from services.platform.settings import SettingsError


@pytest.mark.parametrize(
    ("password", "ok"),
    [
        ("short", False),
        ("1234567", False),
        ("12345678", False),  # common
        ("QWERTYUIOP", False),  # common, case-insensitively
        ("........", False),
        ("x" * 256, False),
        ("x" * 255 + "y", True),
        ("x" * 257, False),
        ("tolerable pass", True),
        ("ünïcødé-ok", True),
    ],
)
def test_password_policy(password, ok):
    if ok:
        check_policy(password)
    else:
        with pytest.raises(errors.InvalidArgument) as caught:
            check_policy(password)
        assert [v.field for v in caught.value.violations] == ["password"]


@pytest.mark.parametrize(
    ("peer", "address"),
    [("ipv4:10.1.2.3:5555", "10.1.2.3"), ("ipv6:[::1]:5555", "::1"), ("unix:/tmp/s", "unix:/tmp/s")],
)
def test_client_address(peer, address):
    assert client_address(peer) == address


def test_token_time_has_millisecond_precision():
    assert token_time(1700000000.123987) == 1700000000.123
    assert token_time(1700000000.9999) < 1700000001


def test_kid_is_the_thumbprint_and_previous_keys_may_be_public(tmp_path):
    path = tmp_path / "k.pem"
    assert ensure_key_file(str(path)) is True
    assert ensure_key_file(str(path)) is False
    first, second = KeySet.load(str(path)), KeySet.load(str(path))
    assert first.kid == second.kid and len(first.kid) == 43
    old = Ed25519PrivateKey.generate()
    public_only = tmp_path / "old.pub.pem"
    public_only.write_bytes(
        old.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    old_private = tmp_path / "old.pem"
    old_private.write_bytes(private_pem(old))
    keys = KeySet.load(str(path), (str(public_only), str(old_private), str(path)))
    assert [k["kid"] for k in keys.jwks()["keys"]] == [first.kid, KeySet(old).kid]


def test_bad_key_files_are_settings_errors(tmp_path):
    with pytest.raises(SettingsError, match="cannot read"):
        KeySet.load(str(tmp_path / "missing.pem"))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    with pytest.raises(SettingsError, match="not a PEM"):
        KeySet.load(str(garbage))


class FakeStore:
    """Just what RefreshToken uses, in memory."""

    def __init__(self, user: User, tenant: Tenant):
        self.user_ = user
        self.tenant_ = tenant
        self.tokens: dict[str, RefreshRecord] = {}

    async def add_refresh(self, record):
        self.tokens[record.token_hash] = record

    async def refresh(self, token_hash):
        return self.tokens.get(token_hash)

    async def spend_refresh(self, token_hash, *, now):
        record = self.tokens[token_hash]
        if record.spent_at or record.revoked_at:
            return False
        self.tokens[token_hash] = dataclasses.replace(record, spent_at=now)
        return True

    async def revoke_family(self, family_id, *, now):
        for h, r in self.tokens.items():
            if r.family_id == family_id:
                self.tokens[h] = dataclasses.replace(r, revoked_at=now)

    async def user(self, tenant_id, user_id):
        return self.user_

    async def tenant(self, tenant_id):
        return self.tenant_


async def test_refresh_tokens_expire_by_the_clock():
    now = [1_700_000_000.0]
    when = datetime.datetime.fromtimestamp(now[0], datetime.UTC)
    tenant = Tenant(
        id="t", name="acme", display_name="", tier="pro", version=1, create_time=when, update_time=when
    )
    user = User(
        id="u",
        tenant_id="t",
        username="a",
        display_name="",
        roles=("member",),
        disabled=False,
        version=1,
        create_time=when,
        update_time=when,
    )
    store = FakeStore(user, tenant)
    redis = fakeredis.FakeAsyncRedis()
    clock = lambda: now[0]  # noqa: E731
    revocations = Revocations(redis, access_ttl=900)
    sessions = Sessions(
        store=store,  # type: ignore[arg-type]
        tokens=TokenIssuer(
            keys=KeySet(Ed25519PrivateKey.generate()),
            issuer="i",
            audience="a",
            access_ttl=900,
            refresh_ttl=3600,
        ),
        revocations=revocations,
        clock=clock,
    )
    service = IdentityService(
        store=store,  # type: ignore[arg-type]
        passwords=Passwords(),
        sessions=sessions,
        throttle=LoginThrottle(redis),
        revocations=revocations,
        keys=sessions.tokens.keys,
        service_secret="s",
        clock=clock,
    )
    first = await sessions.start(user, tenant)
    now[0] += 3599
    second = await service.refresh(refresh_token=first.refresh_token)
    now[0] += 3600
    with pytest.raises(errors.Unauthenticated):
        await service.refresh(refresh_token=second.refresh_token)
    await redis.aclose()
