"""RFC 8725 (JWT best current practice) against a served identity: every forged, altered or
misused token is UNAUTHENTICATED, and the genuine one is accepted (so each case can fail)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import json_format

from agentmesh.identity.v1 import identity_service_pb2 as pb
from services.identity.keys import KeySet
from tests.helpers import bearer, expect_status


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def raw_token(header: dict, claims: dict, signature: bytes = b"") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}.{b64(signature)}"


def claims_for(account, **overrides):
    now = time.time()
    claims = {
        "iss": "agentmesh",
        "aud": "agentmesh",
        "sub": account.user.id,
        "tenant": account.tenant.id,
        "roles": ["owner"],
        "tier": "free",
        "typ": "access",
        "jti": uuid.uuid4().hex,
        "iat": now,
        "exp": now + 300,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


async def who_am_i(identity, token):
    return await identity.stub.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(token))


async def assert_rejected(identity, token):
    error = await expect_status(who_am_i(identity, token))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error
    assert error.details() == "invalid or expired access token"


async def test_genuine_token_and_self_minted_token_are_accepted(identity, signer):
    account = await identity.sign_up()
    assert (await who_am_i(identity, account.tokens.access_token)).user.id == account.user.id
    header = json.loads(base64.urlsafe_b64decode(account.tokens.access_token.split(".")[0] + "=="))
    assert header == {"alg": "EdDSA", "kid": signer.kid, "typ": "JWT"}
    assert (await who_am_i(identity, signer.sign(claims_for(account)))).user.id == account.user.id


async def test_alg_none_is_rejected(identity, signer):
    account = await identity.sign_up()
    await assert_rejected(identity, raw_token({"alg": "none", "kid": signer.kid}, claims_for(account)))
    await assert_rejected(identity, raw_token({"alg": "none"}, claims_for(account)))


async def test_hs256_signed_with_the_public_key_is_rejected(identity, signer):
    account = await identity.sign_up()
    public = signer.signing_key.public_key()
    for secret in (
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
    ):
        header = {"alg": "HS256", "kid": signer.kid, "typ": "JWT"}
        unsigned = raw_token(header, claims_for(account))[:-1]
        signature = hmac.new(secret, unsigned.encode(), hashlib.sha256).digest()
        await assert_rejected(identity, unsigned + "." + b64(signature))


async def test_tampered_payload_is_rejected(identity, signer):
    owner = await identity.sign_up()
    other = await identity.sign_up()
    head, _, sig = signer.sign(claims_for(owner)).split(".")
    forged = claims_for(owner, tenant=other.tenant.id)
    await assert_rejected(identity, f"{head}.{b64(json.dumps(forged).encode())}.{sig}")


@pytest.mark.parametrize(
    "overrides",
    [
        {"iss": "someone-else"},
        {"aud": "another-audience"},
        {"exp": time.time() - 120, "iat": time.time() - 600},
        {"nbf": time.time() + 3600},
        {"exp": None},
        {"iat": None},
        {"jti": None},
        {"sub": None},
        {"tenant": None},
        {"typ": "refresh"},
        {"typ": None},
    ],
    ids=lambda o: ",".join(f"{k}={'missing' if v is None else v}" for k, v in o.items()),
)
async def test_bad_claims_are_rejected(identity, signer, overrides):
    account = await identity.sign_up()
    await assert_rejected(identity, signer.sign(claims_for(account, **overrides)))


async def test_unknown_kid_and_foreign_key_are_rejected(identity, signer):
    account = await identity.sign_up()
    stranger = KeySet(Ed25519PrivateKey.generate())
    await assert_rejected(identity, stranger.sign(claims_for(account)))
    # A foreign key that claims identity's kid: the signature does not verify.
    head = b64(json.dumps({"alg": "EdDSA", "kid": signer.kid, "typ": "JWT"}).encode())
    body = b64(json.dumps(claims_for(account)).encode())
    signature = stranger.signing_key.sign(f"{head}.{body}".encode())
    await assert_rejected(identity, f"{head}.{body}.{b64(signature)}")


async def test_refresh_token_used_as_access_token_is_rejected(identity):
    account = await identity.sign_up()
    await assert_rejected(identity, account.tokens.refresh_token)


@pytest.mark.parametrize("mangle", ["truncate", "garbage", "two-parts", "empty-signature"])
async def test_malformed_and_truncated_tokens_are_rejected(identity, mangle):
    account = await identity.sign_up()
    token = account.tokens.access_token
    bad = {
        "truncate": token[:-12],
        "garbage": "not-a-token",
        "two-parts": ".".join(token.split(".")[:2]),
        "empty-signature": ".".join(token.split(".")[:2]) + ".",
    }[mangle]
    await assert_rejected(identity, bad)


async def test_bad_token_is_rejected_even_on_public_methods(identity):
    account = await identity.sign_up()
    error = await expect_status(
        identity.stub.GetJwks(pb.GetJwksRequest(), metadata=bearer(account.tokens.access_token[:-5]))
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_jwks_publishes_the_signing_key(identity, signer):
    jwks = await identity.stub.GetJwks(pb.GetJwksRequest())
    assert [(k.kty, k.crv, k.alg, k.use, k.kid) for k in jwks.keys] == [
        ("OKP", "Ed25519", "EdDSA", "sig", signer.kid)
    ]
    # RFC 8037: an OKP key has no "y"; the field has presence, so it is absent, not "".
    assert not any(k.HasField("y") for k in jwks.keys)
    published = json_format.MessageToDict(jwks, always_print_fields_with_no_presence=True)["keys"][0]
    assert "y" not in published
    # PyJWT takes the published key as it is and verifies identity's tokens with it.
    account = await identity.sign_up()
    claims = jwt.decode(
        account.tokens.access_token, jwt.PyJWK(published).key, algorithms=["EdDSA"], audience="agentmesh"
    )
    assert claims["sub"] == account.user.id
