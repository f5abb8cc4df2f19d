"""Agents benchmark: GetAgent throughput against the empty-handler floor, and ListAgents page latency
in a tenant with many agents (first page against page 100).

    python -m bench.agents                      # a fresh PostgreSQL database on 127.0.0.1, dropped after
    python -m bench.agents --database-url postgresql+psycopg://... --redis-url redis://... --agents 10000

Without --database-url (or DATABASE_URL) it creates (and drops) a database on the local server (postgres@127.0.0.1:5432).
Redis: --redis-url or REDIS_URL, default redis://127.0.0.1:6379 (only read: the token revocation check).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import jwt
import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agentmesh.agents.v1 import agents_service_pb2 as pb
from agentmesh.agents.v1 import agents_service_pb2_grpc as pb_grpc
from bench.harness import (
    Figure,
    Result,
    empty_handler,
    figure,
    interleaved,
    machine,
    measure,
    report,
    throughput_figure,
)
from services import agents
from services.agents.models import Agent, AgentVersion, ChangeType
from services.agents.store import AgentStore
from services.platform import migrations
from services.platform.runtime import Runtime
from services.platform.server import Server
from services.platform.settings import Settings

PG_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextlib.asynccontextmanager
async def database(url: str) -> AsyncIterator[str]:
    if url:
        yield url
        return
    name = f"agentmesh_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_SERVER, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_SERVER, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _token(key: Ed25519PrivateKey, kid: str, tenant: str) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "agentmesh",
        "aud": "agentmesh",
        "sub": "bench",
        "tenant": tenant,
        "roles": ["owner"],
        "tier": "enterprise",
        "typ": "access",
        "jti": uuid.uuid4().hex,
        "iat": now,
        "exp": now + 3600,
    }
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid})


def _rows(tenant: str, n: int, start_us: int, first: int) -> list[tuple[Agent, AgentVersion]]:
    out = []
    for i in range(n):
        agent = Agent(
            id=str(uuid.uuid4()),
            tenant_id=tenant,
            display_name=f"agent {first + i}",
            description="bulk",
            state="ACTIVE",
            config={"model": "echo:default", "system_prompt": f"You are agent {i}.", "temperature": 0.5},
            version=1,
            creator="bench",
            template_id="",
            create_time_us=start_us + i,
            update_time_us=start_us + i,
        )
        version = AgentVersion(
            agent_id=agent.id,
            tenant_id=tenant,
            version=1,
            content=agent.content(),
            change_type=ChangeType.CREATED,
            changed_fields=["display_name", "config.model"],
            author="bench",
            create_time_us=start_us + i,
        )
        out.append((agent, version))
    return out


def _combine(results: list[Result]) -> Result:
    calls = sum(r.calls for r in results)
    return Result(
        calls,
        sum(r.seconds for r in results),
        sum(r.p50_ms * r.calls for r in results) / calls,
        max(r.p99_ms for r in results),
    )


async def main(argv: list[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(prog="python -m bench.agents")
    parser.add_argument("--agents", type=int, default=10_000, help="agents in the ListAgents tenant")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--page", type=int, default=100, help="the deep page to compare with the first")
    parser.add_argument("--page-size", type=int, default=50)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", ""))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"))
    args = parser.parse_args(argv)
    logging.disable(logging.INFO)  # one access-log line per call would measure the terminal

    key, kid = Ed25519PrivateKey.generate(), "bench"
    jwk = jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwks = {"keys": [{**jwk, "kid": kid, "alg": "EdDSA", "use": "sig"}]}

    figures: list[Figure] = []
    async with database(args.database_url) as url:
        base = Settings.from_env({}, database_url=url, redis_url=args.redis_url, grpc_port=0)
        settings = dataclasses.replace(base, auth=dataclasses.replace(base.auth, page_token_secret="bench"))
        runtime = await Runtime.create(settings)

        async def jwks_source() -> dict[str, Any]:
            return jwks

        runtime.jwks_source = jwks_source
        await migrations.upgrade(runtime.engine, ["agents"])
        server = Server(runtime, [(await agents.build(runtime)).registration], address="127.0.0.1:0")
        port = await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.AgentServiceStub(channel)
        try:
            print(f"agents benchmark on {machine()}; database {runtime.engine.dialect.name}")
            small, big = f"bench-{uuid.uuid4().hex[:6]}", f"bench-big-{uuid.uuid4().hex[:6]}"
            md_small = (("authorization", f"Bearer {_token(key, kid, small)}"),)
            md_big = (("authorization", f"Bearer {_token(key, kid, big)}"),)
            created = await stub.CreateAgent(
                pb.CreateAgentRequest(
                    agent=pb.Agent(
                        display_name="bench",
                        config=pb.AgentConfig(model="echo:default", system_prompt="hi", temperature=0.3),
                    )
                ),
                metadata=md_small,
            )
            get = pb.GetAgentRequest(agent_id=created.agent.id)

            async with empty_handler() as empty:
                measured = await interleaved(
                    {"floor": empty, "ours": lambda: stub.GetAgent(get, metadata=md_small)},
                    concurrency=args.concurrency,
                    seconds=args.seconds,
                )
            floor, ours = measured["floor"], measured["ours"]
            print(report("GetAgent (auth + PostgreSQL)", ours, floor))
            figures.append(
                throughput_figure(
                    f"GetAgent (auth + PostgreSQL, c={args.concurrency})", ours, floor, at_least=0.6
                )
            )

            store = AgentStore(engine=runtime.engine)
            start_us = int(time.time() * 1e6)
            setup = time.perf_counter()
            for offset in range(0, args.agents, 1000):
                await store.bulk_insert_agents(
                    _rows(big, min(1000, args.agents - offset), start_us + offset, offset)
                )
            if runtime.engine.dialect.name == "postgresql":
                async with runtime.engine.begin() as conn:
                    await conn.exec_driver_sql("ANALYZE agents")
            print(f"inserted {args.agents} agents in {time.perf_counter() - setup:.1f} s")

            token = ""
            for _ in range(args.page - 1):
                page = await stub.ListAgents(
                    pb.ListAgentsRequest(page_size=args.page_size, page_token=token), metadata=md_big
                )
                token = page.next_page_token
                if not token:
                    raise SystemExit(f"fewer than {args.page} pages: use more --agents")
            first_req = pb.ListAgentsRequest(page_size=args.page_size)
            deep_req = pb.ListAgentsRequest(page_size=args.page_size, page_token=token)
            deep_page = await stub.ListAgents(deep_req, metadata=md_big)
            assert deep_page.agents[0].display_name == f"agent {(args.page - 1) * args.page_size}"
            # Alternate the two (twice each) so that load from elsewhere on the machine hits both alike.
            firsts, deeps = [], []
            for _ in range(2):
                firsts.append(
                    await measure(
                        lambda: stub.ListAgents(first_req, metadata=md_big),
                        concurrency=4,
                        seconds=args.seconds / 2,
                    )
                )
                deeps.append(
                    await measure(
                        lambda: stub.ListAgents(deep_req, metadata=md_big),
                        concurrency=4,
                        seconds=args.seconds / 2,
                    )
                )
            first, deep = _combine(firsts), _combine(deeps)
            print(
                f"ListAgents page 1   ({args.page_size}/page, {args.agents} agents): {first.throughput:7.0f} pages/s"
                f"  p50 {first.p50_ms:7.3f} ms  p99 {first.p99_ms:7.3f} ms"
            )
            print(
                f"ListAgents page {args.page:<3} ({args.page_size}/page, {args.agents} agents): "
                f"{deep.throughput:7.0f} pages/s  p50 {deep.p50_ms:7.3f} ms  p99 {deep.p99_ms:7.3f} ms"
            )
            print(
                f"page {args.page} / page 1 p50 latency ratio: {deep.p50_ms / first.p50_ms:5.2f}"
                f"  (throughput ratio {deep.throughput / first.throughput:5.2f})"
            )
            figures.append(
                figure(
                    f"ListAgents page {args.page} against page 1 ({args.agents:,} agents, {args.page_size}/page)",
                    f"page 1 p50 {first.p50_ms:.2f} ms, page {args.page} p50 {deep.p50_ms:.2f} ms",
                    deep.p50_ms / first.p50_ms,
                    f"p50 page {args.page} / page 1",
                    at_most=1.2,
                    target="close to 1 (<= 1.2)",
                )
            )
        finally:
            await channel.close()
            await server.stop(0)
            await runtime.close()
    return figures


if __name__ == "__main__":
    asyncio.run(main())
