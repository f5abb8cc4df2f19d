"""Unit tests without gRPC or a database: policy, parsing, keys, and refresh expiry with the fakes
of tests/fakes/identity.py and a fake clock."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.identity.keys import KeySet, ensure_key_file, private_pem
from services.identity.models import Tenant, User
from services.identity.passwords import check_policy
from services.identity.redis_state import client_address
from services.identity.service import IdentityService
from services.identity.sessions import Sessions
from services.identity.tokens import TokenIssuer, token_time
from services.platform import errors
from services.platform.settings import SettingsError
from services.platform.timestamps import micros
from tests.fakes.identity import FakeHasher, FakeIdentityStore, FakeQuota, FakeRevocations, FakeThrottle


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


def _refreshing(
    now: list[float], *, max_session_seconds: int = 90 * 24 * 3600
) -> tuple[User, Tenant, Sessions, IdentityService, FakeIdentityStore]:
    """A user, a tenant, Sessions and the IdentityService over the fakes and the clock `now[0]`."""
    when = micros(lambda: now[0])
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
    store = FakeIdentityStore()
    store.tenants[tenant.id] = tenant
    store.users[user.id] = user
    clock = lambda: now[0]  # noqa: E731
    revocations = FakeRevocations()
    sessions = Sessions(
        store=store,
        tokens=TokenIssuer(
            keys=KeySet(Ed25519PrivateKey.generate()),
            issuer="i",
            audience="a",
            access_ttl=900,
            refresh_ttl=3600,
        ),
        revocations=revocations,
        clock=clock,
        max_session_seconds=max_session_seconds,
    )
    service = IdentityService(
        store=store,
        passwords=FakeHasher(),
        sessions=sessions,
        throttle=FakeThrottle(),
        revocations=revocations,
        keys=sessions.tokens.keys,
        service_secret="s",
        clock=clock,
        signup_open=False,
        quota=FakeQuota(),
    )
    return user, tenant, sessions, service, store


async def test_refresh_tokens_expire_by_the_clock():
    now = [1_700_000_000.0]
    user, tenant, sessions, service, _ = _refreshing(now)
    first = await sessions.start(user, tenant)
    now[0] += 3599
    second = await service.refresh(refresh_token=first.refresh_token)
    now[0] += 3600
    with pytest.raises(errors.Unauthenticated):
        await service.refresh(refresh_token=second.refresh_token)


async def test_rotation_never_outlives_the_maximum_session():
    """Refreshing every 50 minutes (refresh tokens live an hour) keeps a session alive only until
    its maximum, counted from the login; the last token's lifetime says how long is left."""
    now = [1_700_000_000.0]
    user, tenant, sessions, service, _ = _refreshing(now, max_session_seconds=3 * 3600)
    login = now[0]
    session = await sessions.start(user, tenant)
    lifetimes = []
    for _ in range(10):
        now[0] += 3000
        try:
            session = await service.refresh(refresh_token=session.refresh_token)
        except errors.Unauthenticated:
            break
        lifetimes.append(session.refresh_ttl)
    else:
        pytest.fail(f"the session outlived its maximum: {lifetimes}")
    assert now[0] - login <= 3 * 3600 + 3000
    assert lifetimes[0] == 3600 and 0 < lifetimes[-1] < 3600
    assert lifetimes[-1] == int(login + 3 * 3600 - (now[0] - 3000))
