"""Token lifecycle on real PostgreSQL and Redis: rotation, reuse detection, logout, password change,
disable and delete, key rotation."""

from __future__ import annotations

import dataclasses
import datetime

import grpc
import jwt
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import field_mask_pb2

from agentmesh.identity.v1 import identity_service_pb2 as pb
from services.identity.keys import KeySet, private_pem
from services.identity.store import IdentityStore, refresh_tokens
from services.platform.timestamps import micros
from tests.helpers import bearer, expect_status
from tests.identity.conftest import PASSWORD, field_violations
from tests.identity.test_tokens import claims_for


async def who(identity, token):
    return await identity.stub.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(token))


async def refresh(identity, token):
    return (await identity.stub.RefreshToken(pb.RefreshTokenRequest(refresh_token=token))).tokens


async def assert_dead_access(identity, token):
    assert (await expect_status(who(identity, token))).code() == grpc.StatusCode.UNAUTHENTICATED


async def assert_dead_refresh(identity, token):
    assert (await expect_status(refresh(identity, token))).code() == grpc.StatusCode.UNAUTHENTICATED


async def test_login_returns_tokens_with_lifetimes_and_claims(identity, signer):
    account = await identity.sign_up()
    logged = await identity.login(account.tenant.name, "owner", PASSWORD)
    tokens = logged.tokens
    assert tokens.token_type == "Bearer"
    assert tokens.access_token_lifetime.seconds == 900
    assert tokens.refresh_token_lifetime.seconds == 30 * 24 * 3600
    claims = jwt.decode(
        tokens.access_token, signer.signing_key.public_key(), algorithms=["EdDSA"], audience="agentmesh"
    )
    assert set(claims) == {"iss", "aud", "sub", "tenant", "roles", "tier", "typ", "jti", "iat", "exp"}
    assert (claims["sub"], claims["tenant"], claims["roles"], claims["tier"], claims["typ"]) == (
        account.user.id,
        account.tenant.id,
        ["owner"],
        "free",
        "access",
    )
    assert claims["exp"] - claims["iat"] == 900


async def test_refresh_rotates_and_reuse_revokes_the_family(identity):
    account = await identity.sign_up()
    first = account.tokens.refresh_token
    second = await refresh(identity, first)
    assert second.refresh_token != first
    assert (await who(identity, second.access_token)).user.id == account.user.id
    third = await refresh(identity, second.refresh_token)
    # Replaying a spent token (the thief or the victim, we cannot tell) ends the whole family.
    error = await expect_status(refresh(identity, first))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    await assert_dead_refresh(identity, third.refresh_token)
    # Another session of the same user (another family) is untouched.
    other = await identity.login(account.tenant.name, "owner", PASSWORD)
    assert (await refresh(identity, other.tokens.refresh_token)).access_token


async def test_bad_refresh_tokens(identity):
    account = await identity.sign_up()
    error = await expect_status(refresh(identity, ""))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(error) == ["refresh_token"]
    for bad in (account.tokens.refresh_token[:-3], "amr_" + "x" * 300, account.tokens.access_token, "junk"):
        await assert_dead_refresh(identity, bad)


async def test_logout_revokes_refresh_family_and_denies_the_access_token(identity):
    account = await identity.sign_up()
    rotated = await refresh(identity, account.tokens.refresh_token)
    other = await identity.login(account.tenant.name, "owner", PASSWORD)
    await identity.stub.Logout(
        pb.LogoutRequest(refresh_token=rotated.refresh_token), metadata=bearer(rotated.access_token)
    )
    await assert_dead_access(identity, rotated.access_token)
    await assert_dead_refresh(identity, rotated.refresh_token)
    # Logout ends this session only.
    assert (await who(identity, other.tokens.access_token)).user.id == account.user.id
    # Without a token it still revokes the refresh family; with neither it is a bad request.
    await identity.stub.Logout(pb.LogoutRequest(refresh_token=other.tokens.refresh_token))
    await assert_dead_refresh(identity, other.tokens.refresh_token)
    error = await expect_status(identity.stub.Logout(pb.LogoutRequest()))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_change_password_revokes_earlier_tokens_but_not_the_new_ones(identity):
    account = await identity.sign_up()
    other = await identity.login(account.tenant.name, "owner", PASSWORD)
    reply = await identity.stub.ChangePassword(
        pb.ChangePasswordRequest(old_password=PASSWORD, new_password="a brand new secret"),
        metadata=account.md,
    )
    # Issued in the same second as the revocation mark: still valid (millisecond iat).
    assert (await who(identity, reply.tokens.access_token)).user.id == account.user.id
    assert (await refresh(identity, reply.tokens.refresh_token)).access_token
    for earlier in (account, other):
        await assert_dead_access(identity, earlier.tokens.access_token)
        await assert_dead_refresh(identity, earlier.tokens.refresh_token)
    error = await expect_status(identity.login(account.tenant.name, "owner", PASSWORD))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert await identity.login(account.tenant.name, "owner", "a brand new secret")


async def test_change_password_checks_old_password_and_policy(identity):
    account = await identity.sign_up()
    error = await expect_status(
        identity.stub.ChangePassword(
            pb.ChangePasswordRequest(old_password="wrong password", new_password="another good one"),
            metadata=account.md,
        )
    )
    assert field_violations(error) == ["old_password"]
    for weak in ("short", "aaaaaaaaaaaa", "password123", "x" * 257):
        error = await expect_status(
            identity.stub.ChangePassword(
                pb.ChangePasswordRequest(old_password=PASSWORD, new_password=weak), metadata=account.md
            )
        )
        assert field_violations(error) == ["new_password"], weak
    # Nothing changed: the old password and token still work.
    assert (await who(identity, account.tokens.access_token)).user.id == account.user.id
    assert await identity.login(account.tenant.name, "owner", PASSWORD)


async def test_disable_and_delete_end_sessions(identity):
    owner = await identity.sign_up()
    member = await identity.add_user(owner, "member1")
    other = await identity.add_user(owner, "member2")
    await identity.stub.UpdateUser(
        pb.UpdateUserRequest(
            user=pb.User(id=member.user.id, disabled=True),
            update_mask=field_mask_pb2.FieldMask(paths=["disabled"]),
        ),
        metadata=owner.md,
    )
    await assert_dead_access(identity, member.tokens.access_token)
    await assert_dead_refresh(identity, member.tokens.refresh_token)
    assert (await expect_status(identity.login(owner.tenant.name, "member1", PASSWORD))).code() == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    await identity.stub.DeleteUser(pb.DeleteUserRequest(user_id=other.user.id), metadata=owner.md)
    await assert_dead_access(identity, other.tokens.access_token)
    await assert_dead_refresh(identity, other.tokens.refresh_token)
    # The owner is untouched.
    assert (await who(identity, owner.tokens.access_token)).user.id == owner.user.id


async def test_key_rotation_overlap(serve, runtime, identity_key_file, tmp_path, signer):
    # identity_key_file becomes the previous key; a new key signs from now on.
    new_key = tmp_path / "new.pem"
    new_key.write_bytes(private_pem(Ed25519PrivateKey.generate()))
    auth = dataclasses.replace(
        runtime.settings.auth, signing_key_file=str(new_key), previous_signing_key_files=(identity_key_file,)
    )
    runtime.settings = dataclasses.replace(runtime.settings, auth=auth)
    running = await serve("identity")
    from tests.identity.conftest import Identity

    identity = Identity(running.channel, running.address)
    new = KeySet.load(str(new_key))
    jwks = await identity.stub.GetJwks(pb.GetJwksRequest())
    assert [k.kid for k in jwks.keys] == [new.kid, signer.kid]
    account = await identity.sign_up()
    assert jwt.get_unverified_header(account.tokens.access_token)["kid"] == new.kid
    # A token the old key signed before the rollover still verifies...
    assert (await who(identity, signer.sign(claims_for(account)))).user.id == account.user.id
    # ...and one from a key outside the set does not.
    stranger = KeySet(Ed25519PrivateKey.generate())
    await assert_dead_access(identity, stranger.sign(claims_for(account)))


async def test_sessions_that_are_over_are_pruned_whole(identity, runtime):
    """A family whose every token expired is deleted; a family with a live token is kept whole (its
    first token dates the session), and still refreshes."""
    account = await identity.sign_up()
    ended = account.tokens.refresh_token
    ended = (await refresh(identity, ended)).refresh_token  # two rows in the ended family
    kept = (await identity.login(account.tenant.name, "owner", PASSWORD)).tokens.refresh_token
    kept = (await refresh(identity, kept)).refresh_token
    rt = refresh_tokens.c
    store = IdentityStore(runtime.engine)
    now = datetime.datetime.now(datetime.UTC)
    async with runtime.engine.begin() as conn:
        users_rows = sa.select(rt.family_id).where(rt.user_id == account.user.id)
        families = sorted({r.family_id for r in (await conn.execute(users_rows)).all()})
        assert len(families) == 2
        first_row = sa.select(rt.family_id).where(rt.user_id == account.user.id).order_by(rt.issued_at)
        ended_family = (await conn.execute(first_row)).first().family_id
        # The ended session: every token past its expiry. The kept one: only its first token.
        past = now - datetime.timedelta(days=1)
        await conn.execute(
            refresh_tokens.update().where(rt.family_id == ended_family).values(expires_at=past)
        )
        kept_family = next(f for f in families if f != ended_family)
        oldest_kept = sa.select(sa.func.min(rt.issued_at)).where(rt.family_id == kept_family)
        await conn.execute(
            refresh_tokens.update()
            .where(
                rt.family_id == kept_family, rt.issued_at == (await conn.execute(oldest_kept)).scalar_one()
            )
            .values(expires_at=past)
        )

    assert await store.prune_dead_families(now=micros(now.timestamp)) == 2
    async with runtime.engine.connect() as conn:
        left = (await conn.execute(sa.select(rt.family_id).where(rt.user_id == account.user.id))).all()
    assert {r.family_id for r in left} == {kept_family} and len(left) == 2
    assert (await refresh(identity, kept)).access_token
    await assert_dead_refresh(identity, ended)
