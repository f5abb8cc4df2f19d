"""Identity benchmark: token verification cost, the auth middleware's share of an RPC, Login throughput.

    python -m bench.identity [--seconds 3] [--concurrency 16] [--database-url ...] [--redis-url ...]

Runs on the embedded default (SQLite and in-process fakeredis in a temporary data directory) unless
URLs are given. Every ratio compares figures measured in this same run:
- verification: µs per call of the signature and claim checks alone, and of the full verifier (plus
  the Redis revocation lookup);
- WhoAmI through the standard Authentication middleware versus the same server with a middleware that
  sets a fixed, pre-verified principal (no JWT work): the throughput ratio is auth's overhead;
- Login throughput next to argon2id verification alone at the same concurrency, and the share of one
  Login's latency that argon2 takes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import statistics
import tempfile
import time
from collections.abc import AsyncIterator

import grpc
import jwt

from agentmesh.identity.v1 import identity_service_pb2 as pb
from agentmesh.identity.v1 import identity_service_pb2_grpc as pb_grpc
from bench.harness import Figure, Result, figure, machine, measure
from services import identity
from services.identity.passwords import Passwords
from services.platform import migrations
from services.platform.auth import ALGORITHMS, REQUIRED_CLAIMS, Principal
from services.platform.call_context import CallInfo
from services.platform.runtime import Runtime, with_embedded_secrets
from services.platform.server import Server
from services.platform.settings import Settings


class FixedPrincipal:
    """Stands in for Authentication: the same principal on every call, no token work at all."""

    def __init__(self, principal: Principal):
        self._principal = principal

    @contextlib.asynccontextmanager
    async def around(self, call: CallInfo) -> AsyncIterator[None]:
        call.principal = self._principal
        yield


def _median(results: list[Result]) -> Result:
    return sorted(results, key=lambda r: r.throughput)[len(results) // 2]


def per_call_us(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


async def per_call_async_us(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    for _ in range(n):
        await fn()
    return (time.perf_counter() - start) / n * 1e6


async def run(args: argparse.Namespace) -> list[Figure]:
    data_dir = tempfile.mkdtemp(prefix="agentmesh-bench-")
    embedded = Settings.from_env(
        {}, data_dir=data_dir, grpc_port=0, database_url=args.database_url, redis_url=args.redis_url
    ).embedded_defaults()
    # Identity alone: no conversation to ask for WhoAmI's quota (it would try the own address, fail
    # every call and log it), as a deployment without conversation's address runs.
    settings = with_embedded_secrets(
        dataclasses.replace(embedded, peers=dataclasses.replace(embedded.peers, conversation=""))
    )
    runtime = await Runtime.create(settings)
    servers: list[Server] = []
    figures: list[Figure] = []
    try:
        await migrations.upgrade(runtime.engine, ["identity"])
        registration = (await identity.build(runtime)).registration  # embedded: demo tenant, user_1/1234
        plain = Server(runtime, [registration], address="127.0.0.1:0")
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{await plain.start()}")
        servers.append(plain)
        stub = pb_grpc.IdentityServiceStub(channel)
        login = await stub.Login(pb.LoginRequest(tenant="demo", username="user_1", password="1234"))
        token = login.tokens.access_token
        principal = await runtime.verifier.verify(token)
        print(
            f"machine: {machine()}; database {settings.effective_database_url.split(':')[0]}, "
            f"redis {'server' if args.redis_url else 'fakeredis (in-process)'}"
        )

        # 1. Verification cost per call.
        jwks = await runtime.jwks_source()
        key = jwt.PyJWK(dict(jwks["keys"][0])).key
        decode_us = per_call_us(
            lambda: jwt.decode(
                token,
                key,
                algorithms=list(ALGORITHMS),
                audience=settings.auth.audience,
                issuer=settings.auth.issuer,
                options={"require": list(REQUIRED_CLAIMS)},
            ),
            args.verify_calls,
        )
        full_us = await per_call_async_us(lambda: runtime.verifier.verify(token), args.verify_calls)
        print(
            f"token verification: signature + claims {decode_us:7.1f} µs/call; "
            f"full verifier (+ Redis revocation lookup) {full_us:7.1f} µs/call"
        )
        figures.append(
            figure(
                "token verification per call",
                f"signature + claims (PyJWT decode) {decode_us:.1f} µs; TokenVerifier.verify on the same "
                f"token again (verified-token cache + Redis revocation check) {full_us:.1f} µs",
                full_us / decode_us,
                "verifier, token seen before / signature + claims alone",
            )
        )

        # 2. WhoAmI with and without the Authentication middleware, same process, same run.
        unauth = Server(
            runtime, [registration], address="127.0.0.1:0", authentication=FixedPrincipal(principal)
        )
        channel2 = grpc.aio.insecure_channel(f"127.0.0.1:{await unauth.start()}")
        servers.append(unauth)
        stub2 = pb_grpc.IdentityServiceStub(channel2)
        md = (("authorization", f"Bearer {token}"),)
        req = pb.WhoAmIRequest()
        # Alternating rounds, so a load spike from elsewhere hits both sides alike; medians reported.
        withs, withouts = [], []
        for _ in range(args.rounds):
            withouts.append(
                await measure(lambda: stub2.WhoAmI(req), concurrency=args.concurrency, seconds=args.seconds)
            )
            withs.append(
                await measure(
                    lambda: stub.WhoAmI(req, metadata=md), concurrency=args.concurrency, seconds=args.seconds
                )
            )
        with_auth, without = _median(withs), _median(withouts)
        ratios = [w.throughput / wo.throughput for w, wo in zip(withs, withouts, strict=True)]
        print(
            f"WhoAmI with auth    {with_auth.throughput:8.0f} calls/s  p50 {with_auth.p50_ms:6.2f} ms  p99 {with_auth.p99_ms:6.2f} ms"
        )
        print(
            f"WhoAmI without auth {without.throughput:8.0f} calls/s  p50 {without.p50_ms:6.2f} ms  p99 {without.p99_ms:6.2f} ms"
        )
        print(
            f"  auth middleware: throughput ratio with/without {statistics.median(ratios):5.2f} "
            f"(median of {args.rounds} alternating rounds: {', '.join(f'{r:.2f}' for r in ratios)}; c={args.concurrency})"
        )
        figures.append(
            figure(
                f"WhoAmI with the auth middleware against without (c={args.concurrency})",
                f"with {with_auth.throughput:,.0f} calls/s p50 {with_auth.p50_ms:.2f} ms; "
                f"without {without.throughput:,.0f} calls/s p50 {without.p50_ms:.2f} ms "
                f"(median of {args.rounds} alternating rounds)",
                statistics.median(ratios),
                "throughput with / without auth",
            )
        )

        # 3. Login throughput and argon2's share.
        login_req = pb.LoginRequest(tenant="demo", username="user_1", password="1234")
        passwords = Passwords()
        stored = passwords.hash_sync("1234")
        c = args.login_concurrency
        logins = await measure(lambda: stub.Login(login_req), concurrency=c, seconds=args.seconds)
        argon = await measure(lambda: passwords.verify(stored, "1234"), concurrency=c, seconds=args.seconds)
        single_login = await measure(lambda: stub.Login(login_req), concurrency=1, seconds=args.seconds / 2)
        single_argon = await measure(
            lambda: passwords.verify(stored, "1234"), concurrency=1, seconds=args.seconds / 2
        )
        print(f"Login               {logins.throughput:8.1f} calls/s  p50 {logins.p50_ms:6.1f} ms (c={c})")
        print(
            f"argon2id verify     {argon.throughput:8.1f} calls/s  p50 {argon.p50_ms:6.1f} ms (c={c}, "
            f"m={passwords.parameters.memory_cost_kib} KiB t={passwords.parameters.time_cost} "
            f"p={passwords.parameters.parallelism})"
        )
        print(
            f"  Login reaches {logins.throughput / argon.throughput:5.0%} of argon2's own ceiling; "
            f"at c=1 argon2 is {single_argon.p50_ms / single_login.p50_ms:5.0%} of a Login's latency "
            f"({single_argon.p50_ms:.1f} of {single_login.p50_ms:.1f} ms)"
        )
        figures.append(
            figure(
                f"Login throughput, bounded by argon2id (c={c})",
                f"Login {logins.throughput:,.1f}/s p50 {logins.p50_ms:.1f} ms; argon2id verify alone "
                f"{argon.throughput:,.1f}/s; at c=1 argon2 is {single_argon.p50_ms:.1f} of "
                f"{single_login.p50_ms:.1f} ms of a Login",
                logins.throughput / argon.throughput,
                "Login / argon2id verify alone (throughput)",
            )
        )
        await channel.close()
        await channel2.close()
    finally:
        for server in servers:
            await server.stop(0)
        await runtime.close()
    return figures


async def main(argv: list[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(prog="python -m bench.identity", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--login-concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--verify-calls", type=int, default=2000)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--redis-url", default="")
    return await run(parser.parse_args(argv))


if __name__ == "__main__":
    asyncio.run(main())
