"""Access-token verification: every bad token is UNAUTHENTICATED; a good one yields the Principal."""

import base64
import json
import time

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agentmesh.identity.v1 import identity_service_pb2 as pb
from agentmesh.identity.v1 import identity_service_pb2_grpc as pb_grpc
from services.platform import errors
from services.platform.auth import TokenVerifier
from tests.helpers import bearer
from tests.platform.servicers import probe_identity


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def alg_none_token(keys) -> str:
    claims = jwt.decode(keys.token(), options={"verify_signature": False})
    return f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': keys.kid})}.{_b64(claims)}."


def hs256_with_public_key(keys) -> str:
    public_pem = keys.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    claims = jwt.decode(keys.token(), options={"verify_signature": False})
    header = _b64({"alg": "HS256", "typ": "JWT", "kid": keys.kid})
    payload = _b64(claims)
    import hashlib
    import hmac

    signature = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{base64.urlsafe_b64encode(signature).decode().rstrip('=')}"


def tampered(keys) -> str:
    header, payload, signature = keys.token(tenant="tenant-a").split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["tenant"] = "tenant-b"
    return f"{header}.{_b64(claims)}.{signature}"


def other_key_token(keys) -> str:
    # Same kid, signed by a key the JWKS does not have.
    stranger = type(keys)(Ed25519PrivateKey.generate(), kid=keys.kid)
    return stranger.token()


BAD_TOKENS = {
    "expired": lambda k: k.token(ttl=-120),
    "wrong issuer": lambda k: k.token(iss="someone-else"),
    "wrong audience": lambda k: k.token(aud="another-api"),
    "unknown kid": lambda k: type(k)(k.private_key, kid="no-such-key").token(),
    "alg none": alg_none_token,
    "HS256 signed with the public key": hs256_with_public_key,
    "tampered payload": tampered,
    "signed by another key": other_key_token,
    "missing exp": lambda k: k.token(exp=None),
    "missing tenant": lambda k: k.token(tenant=None),
    "future nbf": lambda k: k.token(nbf=int(time.time()) + 3600),
    "refresh type": lambda k: k.token(typ="refresh"),
    "garbage": lambda k: "not-a-jwt",
    "truncated": lambda k: k.token()[:-20],
}


@pytest.mark.parametrize("kind", BAD_TOKENS)
async def test_bad_token_is_unauthenticated(serve, keys, kind):
    running = await serve(probe_identity())
    stub = pb_grpc.IdentityServiceStub(running.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(BAD_TOKENS[kind](keys)))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # One message for every failure: which check failed is not the caller's to learn.
    assert caught.value.details() == "invalid or expired access token"


async def test_missing_token_is_unauthenticated(serve):
    running = await serve(probe_identity())
    stub = pb_grpc.IdentityServiceStub(running.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.WhoAmI(pb.WhoAmIRequest())
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_non_bearer_authorization_is_unauthenticated(serve, keys):
    running = await serve(probe_identity())
    stub = pb_grpc.IdentityServiceStub(running.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.WhoAmI(pb.WhoAmIRequest(), metadata=(("authorization", f"Basic {keys.token()}"),))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_valid_token_reaches_the_service_as_principal(serve, keys):
    running = await serve(probe_identity())
    stub = pb_grpc.IdentityServiceStub(running.channel)
    reply = await stub.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(keys.token(tenant="t-9", sub="u-7")))
    assert (reply.user.id, reply.user.tenant_id) == ("u-7", "t-9")


async def test_revoked_jti_is_unauthenticated(serve, keys, runtime):
    running = await serve(probe_identity())
    stub = pb_grpc.IdentityServiceStub(running.channel)
    token = keys.token()
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    await stub.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(token))
    await runtime.redis.set(f"auth:denied-jti:{jti}", "1", ex=60)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(token))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_unknown_kid_refetches_jwks_once():
    """A rotated-in key is picked up by one re-fetch; a flood of unknown kids does not re-fetch each time."""
    from tests.conftest import TestKeys

    old = TestKeys(Ed25519PrivateKey.generate(), kid="old")
    new = TestKeys(Ed25519PrivateKey.generate(), kid="new")
    published = {"keys": old.jwks()["keys"]}
    fetches = 0
    now = [1000.0]

    async def source():
        nonlocal fetches
        fetches += 1
        return published

    verifier = TokenVerifier(source, issuer="agentmesh", audience="agentmesh", clock=lambda: now[0])
    await verifier.verify(old.token())
    assert fetches == 1
    published = {"keys": old.jwks()["keys"] + new.jwks()["keys"]}
    now[0] += 5
    assert (await verifier.verify(new.token())).user_id == "user-a"
    assert fetches == 2
    now[0] += 5
    for _ in range(20):
        with pytest.raises(errors.Unauthenticated):
            await verifier.verify(TestKeys(Ed25519PrivateKey.generate(), kid="bogus").token())
    assert fetches == 3  # one re-fetch for the bogus kid, then rate-limited
