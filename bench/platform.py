"""The cost of the shared runtime: an authenticated unary RPC through the full server (tracing,
access log, metrics, error mapping, token verification with the Redis revocation check) against an
empty grpc.aio handler, in the same run.

    python -m bench.platform [--concurrency 16] [--seconds 3] [--database-url URL] [--redis-url URL]

Uses the flags, else DATABASE_URL / REDIS_URL when set (for example a real Redis), else the embedded
default.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import tempfile
import time
import uuid

import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agentmesh.identity.v1 import identity_service_pb2 as pb
from agentmesh.identity.v1 import identity_service_pb2_grpc as pb_grpc
from bench.harness import Figure, empty_handler, interleaved, machine, report, throughput_figure
from services.platform.auth import principal
from services.platform.runtime import Runtime
from services.platform.server import Server, ServiceRegistration
from services.platform.settings import Settings


class WhoAmI(pb_grpc.IdentityServiceServicer):
    async def WhoAmI(self, request, context):  # type: ignore[no-untyped-def]
        caller = principal()
        return pb.WhoAmIResponse(user=pb.User(id=caller.user_id, tenant_id=caller.tenant_id))


def _token(key: Ed25519PrivateKey, kid: str) -> str:
    now = time.time()
    claims = {
        "iss": "agentmesh",
        "aud": "agentmesh",
        "sub": "u",
        "tenant": "t",
        "roles": ["member"],
        "tier": "pro",
        "typ": "access",
        "jti": uuid.uuid4().hex,
        "iat": int(now),
        "exp": int(now + 3600),
    }
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid})


async def main(argv: list[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(prog="python -m bench.platform")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", ""))
    args = parser.parse_args(argv)
    concurrency, seconds = args.concurrency, args.seconds
    key, kid = Ed25519PrivateKey.generate(), "bench"
    jwk = {**jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": kid, "alg": "EdDSA"}
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings.from_env(
            os.environ,
            data_dir=data_dir,
            grpc_port=0,
            database_url=args.database_url,
            redis_url=args.redis_url,
        )
        settings = dataclasses.replace(
            settings, auth=dataclasses.replace(settings.auth, page_token_secret="bench")
        )
        runtime = await Runtime.create(settings)

        async def jwks():  # type: ignore[no-untyped-def]
            return {"keys": [jwk]}

        runtime.jwks_source = jwks
        servicer = WhoAmI()
        registration = ServiceRegistration(
            name="agentmesh.identity.v1.IdentityService",
            add_to_server=lambda server: pb_grpc.add_IdentityServiceServicer_to_server(servicer, server),
        )
        server = Server(runtime, [registration], address="127.0.0.1:0")
        port = await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.IdentityServiceStub(channel)
        metadata = (("authorization", f"Bearer {_token(key, kid)}"),)
        request = pb.WhoAmIRequest()
        lines = [
            f"machine: {machine()}; concurrency {concurrency}, {seconds}s per measurement",
            f"redis: {'real ' + settings.redis_url if settings.redis_url else 'in-process fakeredis'}",
        ]
        try:
            async with empty_handler() as empty:
                measured = await interleaved(
                    {"floor": empty, "ours": lambda: stub.WhoAmI(request, metadata=metadata)},
                    concurrency=concurrency,
                    seconds=seconds,
                )
            floor, ours = measured["floor"], measured["ours"]
            lines.append(report("authenticated unary (full chain)", ours, floor))
            figures = [
                throughput_figure(
                    f"authenticated unary RPC through the full middleware chain (c={concurrency})",
                    ours,
                    floor,
                    at_least=0.6,
                )
            ]
        finally:
            await channel.close()
            await server.stop(0)
            await runtime.close()
    for line in lines:
        print(line)
    return figures


if __name__ == "__main__":
    asyncio.run(main())
