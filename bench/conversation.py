"""Conversation benchmarks, on a fresh PostgreSQL database and the local Redis:

1. AppendMessage throughput through gRPC with 32 concurrent writers (32 conversations), the service
   in --workers processes of its own sharing the port as `agentmesh serve conversation --workers N`
   runs it (the writers are a client process), beside an empty handler served the same way and the same appends called on the service
   layer directly (no gRPC, no auth), which shows where the time goes.
2. GetContext p50 for a conversation of 100 messages against one of 100,000 (bulk-inserted), as a ratio.
3. SearchConversations latency over a corpus of --messages messages (one tenant, the worst case).
4. Branches: the active path's reads (GetContext, ListMessages) inside a tree of 11 branches against
   a lone path of the same length (min(1,000, --history) messages), and SwitchBranch's cost.

    python -m bench.conversation [--seconds 3] [--messages 100000] [--history 100000]
        [--database-url URL (used as is; else a fresh database, dropped after)] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import os
import pathlib
import random
import sys
import tempfile
import time
import uuid
from typing import Any

import grpc
import jwt
import psycopg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentmesh.conversation.v1 import conversation_service_pb2 as pb
from agentmesh.conversation.v1 import conversation_service_pb2_grpc as pb_grpc
from bench.harness import (
    Figure,
    empty_server,
    figure,
    interleaved,
    machine,
    measure,
    report,
    start_child,
    stop_children,
)
from services import conversation
from services.conversation.models import NewMessage
from services.platform import migrations
from services.platform.auth import Principal
from services.platform.runtime import Runtime
from services.platform.server import Server
from services.platform.settings import Settings
from tests.helpers import free_port

PG_SERVER = os.environ.get("AGENTMESH_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("AGENTMESH_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
KID = "bench"


def _token(key: Ed25519PrivateKey, tenant: str, user: str) -> str:
    now = int(time.time())
    claims = {
        "iss": "agentmesh", "aud": "agentmesh", "sub": user, "tenant": tenant, "roles": ["owner"],
        "tier": "enterprise", "typ": "access", "jti": uuid.uuid4().hex, "iat": now, "exp": now + 3600,
    }  # fmt: skip
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": KID})


def _jwks(key: Ed25519PrivateKey) -> dict[str, Any]:
    jwk = jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {"keys": [{**jwk, "kid": KID, "alg": "EdDSA", "use": "sig"}]}


async def _serve(url: str, redis_url: str, key_file: str, port: int, empty_port: int) -> None:
    """Child process (one of --workers): the conversation service and an empty handler, each on a
    port the workers share (SO_REUSEPORT, as `agentmesh serve --workers`), trusting the key in
    `key_file`; says SERVING, and serves until stdin closes."""
    key = _load_key(key_file)
    runtime = await Runtime.create(_settings(url, redis_url))

    async def jwks() -> dict[str, Any]:
        return _jwks(key)

    runtime.jwks_source = jwks
    registrations = [(await conversation.build(runtime)).registration]
    server = Server(runtime, registrations, address=f"127.0.0.1:{port}", reuse_port=True)
    await server.start()
    async with empty_server(empty_port, reuse_port=True):
        print("SERVING", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(0)
    await runtime.close()


def _load_key(path: str) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(pathlib.Path(path).read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def _connections(port: int, count: int) -> list[grpc.aio.Channel]:
    """`count` channels, each its own TCP connection (grpc shares one between identical channels
    otherwise): SO_REUSEPORT spreads connections, not calls, over the workers."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    return [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) for _ in range(count)]


async def _start_workers(
    args: argparse.Namespace, url: str, key: Ed25519PrivateKey, directory: str
) -> tuple[list[asyncio.subprocess.Process], int, int]:
    """--workers `_serve` children on two shared ports; returns them and the ports."""
    key_file = pathlib.Path(directory) / "key.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    port, empty_port = free_port(), free_port()
    serve = (str(key_file), str(port), str(empty_port), "--database-url", url, "--redis-url", args.redis_url)
    children = []
    for _ in range(args.workers):
        child, said = await start_child("bench.conversation", *serve)
        children.append(child)
        assert said == ["SERVING"], said
    return children, port, empty_port


def _settings(url: str, redis_url: str) -> Settings:
    base = Settings.from_env({}, database_url=url, redis_url=redis_url, grpc_port=0, log_level="WARNING")
    return dataclasses.replace(base, auth=dataclasses.replace(base.auth, page_token_secret="bench"))


def _copy_messages(dsn: str, rows: list[tuple[Any, ...]]) -> None:
    """Bulk-inserts message rows with COPY (setup only; the service never writes this way)."""
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cols = (
            "id, conversation_id, tenant_id, sequence, role, content, token_count, metadata, tool_call_id,"
            " request_id, create_time, parent_id"
        )
        with cur.copy(f"COPY messages ({cols}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        conn.commit()


def _message_id(conversation_id: str, sequence: int) -> str:
    """A history row's id, derived from its place, so a chunk names its first row's parent."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{conversation_id}/{sequence}")) if sequence else ""


def _history_rows(conversation_id: str, tenant: str, start: int, count: int, words: list[str]) -> list[tuple]:
    """One path (each message the parent of the next), as the service stores an unbranched history."""
    rng = random.Random(f"{conversation_id}:{start}")
    weights = _zipf(len(words))
    now = int(time.time() * 1_000_000)
    out = []
    for seq in range(start, start + count):
        content = " ".join(rng.choices(words, cum_weights=weights, k=rng.randint(8, 30)))
        out.append(
            (_message_id(conversation_id, seq), conversation_id, tenant, seq, "user" if seq % 2 else "assistant",
             content, -(-len(content) // 4) + 4, "{}", "", "", now, _message_id(conversation_id, seq - 1))
        )  # fmt: skip
    return out


def _copy_branch(dsn: str, conversation_id: str, tenant: str, fork: int, length: int, tag: str) -> str:
    """An off-path branch (on_path false): a sibling of the path's message at depth `fork` and its
    descendants down to depth `length`; the id of its leaf."""
    now = int(time.time() * 1_000_000)

    def mid(seq: int) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{conversation_id}/{tag}/{seq}"))

    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cols = (
            "id, conversation_id, tenant_id, sequence, role, content, token_count, metadata, tool_call_id,"
            " request_id, create_time, parent_id, on_path"
        )
        with cur.copy(f"COPY messages ({cols}) FROM STDIN") as copy:
            for seq in range(fork, length + 1):
                parent = _message_id(conversation_id, seq - 1) if seq == fork else mid(seq - 1)
                copy.write_row(
                    (mid(seq), conversation_id, tenant, seq, "user" if seq % 2 else "assistant",
                     f"branch {tag} message {seq}", 8, "{}", "", "", now, parent, False)
                )  # fmt: skip
        conn.commit()
    return mid(length)


async def _branches(
    stub: Any,
    md: Any,
    dsn: str,
    runtime: Runtime,
    tenant: str,
    words: list[str],
    *,
    path: int,
    seconds: float,
) -> list[Figure]:
    """4. Branches (issue 17): the active path's reads on a conversation whose tree holds 10 more
    branches (each as long as the path) against a single path of the same length, and what a
    SwitchBranch between two branches that part at depth 2 costs (it rewrites both paths' flags)."""
    from sqlalchemy import text

    cids = {}
    for shape in ("path", "tree"):
        cid = (
            await stub.CreateConversation(pb.CreateConversationRequest(agent_id="br"), metadata=md)
        ).conversation.id
        await asyncio.to_thread(_copy_messages, dsn, _history_rows(cid, tenant, 1, path, words))
        extra = 0
        if shape == "tree":
            for b in range(10):
                fork = 2 + b * max(1, path // 10) if b else 2
                fork = min(fork, path)
                await asyncio.to_thread(_copy_branch, dsn, cid, tenant, fork, path, f"b{b}")
                extra += path - fork + 1
        async with runtime.engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE conversations SET message_count = :n, path_length = :p, active_leaf_id = :leaf"
                    " WHERE id = :id"
                ),
                {"n": path + extra, "p": path, "id": cid, "leaf": _message_id(cid, path)},
            )
        cids[shape] = (cid, extra)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ANALYZE messages")
    calls = {}
    for shape, (cid, _) in cids.items():
        context = pb.GetContextRequest(conversation_id=cid, token_budget=4000)
        listing = pb.ListMessagesRequest(conversation_id=cid, page_size=50)
        await stub.GetContext(context, metadata=md)  # fills the hot window
        calls[f"context {shape}"] = lambda r=context: stub.GetContext(r, metadata=md)
        calls[f"list {shape}"] = lambda r=listing: stub.ListMessages(r, metadata=md)
    results = await interleaved(calls, concurrency=1, seconds=seconds / 3)
    tree_extra = cids["tree"][1]
    for name, r in results.items():
        print(
            f"Branches: {name:<13} p50 {r.p50_ms:7.3f} ms  (path {path} messages; the tree {tree_extra} more)"
        )
    context_ratio = results["context tree"].p50_ms / results["context path"].p50_ms
    list_ratio = results["list tree"].p50_ms / results["list path"].p50_ms
    # SwitchBranch back and forth between the path and a branch that parts from it at depth 2.
    tree_id = cids["tree"][0]
    leaves = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tree_id}/b0/{path}")), _message_id(tree_id, path)]
    turn = itertools.cycle(leaves)

    async def switch() -> Any:
        request = pb.SwitchBranchRequest(conversation_id=tree_id, message_id=next(turn))
        return await stub.SwitchBranch(request, metadata=md)

    switched = await measure(switch, concurrency=1, seconds=seconds, warmup=0.2)
    print(
        f"Branches: GetContext tree / path {context_ratio:.2f}, ListMessages tree / path {list_ratio:.2f}; "
        f"SwitchBranch (2 x {path - 1} flags) p50 {switched.p50_ms:.2f} ms p99 {switched.p99_ms:.2f} ms"
    )
    return [
        figure(
            f"Branches: GetContext and ListMessages p50 on a {path:,}-message path inside a tree of "
            f"{path + tree_extra:,} messages, against a lone path",
            f"GetContext {results['context tree'].p50_ms:.2f} vs {results['context path'].p50_ms:.2f} ms; "
            f"ListMessages (page of 50) {results['list tree'].p50_ms:.2f} vs {results['list path'].p50_ms:.2f} ms "
            f"(ratio {list_ratio:.2f}); SwitchBranch between branches parting at depth 2 p50 "
            f"{switched.p50_ms:.2f} ms (median of 3 alternating rounds)",
            max(context_ratio, list_ratio),
            "the larger of the two p50 ratios tree / path",
            at_most=1.2,
        )
    ]


def _zipf(n: int) -> list[float]:
    """Cumulative Zipf weights: word k is drawn with probability proportional to 1/k, like prose."""
    total, out = 0.0, []
    for k in range(1, n + 1):
        total += 1.0 / k
        out.append(total)
    return out


def _vocabulary(size: int = 20_000) -> list[str]:
    rng = random.Random(7)
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(size)]


async def main(argv: list[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(prog="python -m bench.conversation")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--writers", type=int, default=32)
    parser.add_argument("--history", type=int, default=100_000, help="messages in the long conversation")
    parser.add_argument("--messages", type=int, default=100_000, help="size of the search corpus")
    parser.add_argument("--database-url", default="", help="an empty PostgreSQL database to use as is")
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument(
        "--workers", type=int, default=1, help="service processes sharing the port for the append figure"
    )
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        key_file, port, empty_port = args.serve
        await _serve(args.database_url, args.redis_url, key_file, int(port), int(empty_port))
        return []

    figures: list[Figure] = []
    own_database = not args.database_url
    if own_database:
        name = f"agentmesh_bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(PG_SERVER, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        dsn = f"{PG_SERVER.rsplit('/', 1)[0]}/{name}"
        url = dsn.replace("postgresql://", "postgresql+psycopg://", 1)
    else:
        url = args.database_url
        dsn = url.replace("postgresql+psycopg://", "postgresql://", 1)
        name = dsn.rsplit("/", 1)[1]
    settings = _settings(url, args.redis_url)
    key = Ed25519PrivateKey.generate()
    runtime = await Runtime.create(settings)

    async def jwks() -> dict[str, Any]:
        return _jwks(key)

    runtime.jwks_source = jwks
    server = workdir = None
    children: list[asyncio.subprocess.Process] = []
    try:
        await migrations.upgrade(runtime.engine, ["conversation"])
        built = await conversation.build(runtime)
        server = Server(runtime, [built.registration], address="127.0.0.1:0")
        port = await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.ConversationServiceStub(channel)
        tenant = "bench-tenant"
        md = (("authorization", f"Bearer {_token(key, tenant, 'writer')}"),)
        print(f"machine: {machine()}; PostgreSQL database {name}; Redis {args.redis_url}")

        # 1. AppendMessage throughput, against the service in processes of its own.
        workdir = tempfile.TemporaryDirectory(prefix="bench-conversation-")
        children, served_port, empty_port = await _start_workers(args, url, key, workdir.name)
        served = _connections(served_port, 4 * args.workers)
        writer_stubs = itertools.cycle([pb_grpc.ConversationServiceStub(c) for c in served])
        convs = [
            (
                await next(writer_stubs).CreateConversation(
                    pb.CreateConversationRequest(agent_id="bench"), metadata=md
                )
            ).conversation.id
            for _ in range(args.writers)
        ]
        ring = itertools.cycle(convs)
        message = pb.Message(
            role=pb.MESSAGE_ROLE_USER, content="a benchmark message of a typical short length " * 3
        )

        def append() -> Any:
            return next(writer_stubs).AppendMessage(
                pb.AppendMessageRequest(conversation_id=next(ring), message=message), metadata=md
            )

        empty_channels = _connections(empty_port, 4 * args.workers)
        empty_stubs = itertools.cycle([health_pb2_grpc.HealthStub(c) for c in empty_channels])
        measured = await interleaved(
            {"floor": lambda: next(empty_stubs).Check(health_pb2.HealthCheckRequest()), "ours": append},
            concurrency=args.writers,
            seconds=args.seconds,
        )
        floor, ours = measured["floor"], measured["ours"]
        print(report(f"AppendMessage gRPC ({args.writers} writers, {args.workers} workers)", ours, floor))
        one = convs[0]

        def same_conversation() -> Any:
            return next(writer_stubs).AppendMessage(
                pb.AppendMessageRequest(conversation_id=one, message=message), metadata=md
            )

        hot = await measure(same_conversation, concurrency=args.writers, seconds=args.seconds)
        print(
            f"AppendMessage gRPC, all {args.writers} writers on ONE conversation {hot.throughput:7.0f} msg/s"
            f"  p50 {hot.p50_ms:7.3f} ms  (serialised by the row lock)"
        )
        for c in [*served, *empty_channels]:
            await c.close()
        await stop_children(*children)
        children = []
        service = built.service
        who = Principal(user_id="writer", tenant_id=tenant, roles=frozenset({"owner"}), tier="enterprise")
        new = NewMessage(role="user", content=message.content)

        def direct() -> Any:
            return service.append_message(who, next(ring), new)

        layer = await measure(direct, concurrency=args.writers, seconds=args.seconds)
        print(
            f"AppendMessage service layer only      {layer.throughput:9.0f} msg/s    p50 {layer.p50_ms:7.3f} ms"
            f"  (no gRPC, no token check; PostgreSQL commit + Redis write)"
        )
        figures.append(
            figure(
                f"AppendMessage on PostgreSQL, {args.writers} concurrent writers, "
                f"`agentmesh serve conversation --workers {args.workers}` as the service",
                f"{ours.throughput:,.0f} msg/s, p50 {ours.p50_ms:.2f} ms, p99 {ours.p99_ms:.2f} ms "
                f"(empty handler, {args.workers} workers likewise: {floor.throughput:,.0f} calls/s; all writers on one conversation "
                f"{hot.throughput:,.0f} msg/s)",
                ours.throughput / floor.throughput,
                "throughput / empty handler",
                at_least=1000,
                value=ours.throughput,
                target=">= 1,000 msg/s",
            )
        )
        figures.append(
            figure(
                "AppendMessage through gRPC against the service layer called directly",
                f"service layer {layer.throughput:,.0f} msg/s, p50 {layer.p50_ms:.2f} ms (no gRPC, no token check)",
                ours.throughput / layer.throughput,
                "gRPC / service layer (throughput)",
            )
        )

        # 2. GetContext cost against history length.
        words = _vocabulary()
        lengths = {}
        for size in (100, args.history):
            cid = (
                await stub.CreateConversation(pb.CreateConversationRequest(agent_id="ctx"), metadata=md)
            ).conversation.id
            for start in range(1, size + 1, 50_000):
                rows = _history_rows(cid, tenant, start, min(50_000, size - start + 1), words)
                await asyncio.to_thread(_copy_messages, dsn, rows)
            async with runtime.engine.begin() as conn:
                from sqlalchemy import text

                await conn.execute(
                    text(
                        "UPDATE conversations SET message_count = :n, path_length = :n, active_leaf_id = :leaf"
                        " WHERE id = :id"
                    ),
                    {"n": size, "id": cid, "leaf": _message_id(cid, size)},
                )
            lengths[size] = cid
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("ANALYZE messages")
        # Alternating rounds, so load from elsewhere on the machine hits both sides alike.
        requests = {
            size: pb.GetContextRequest(
                conversation_id=cid, token_budget=4000, system_prompt="You are a bench."
            )
            for size, cid in lengths.items()
        }
        rounds: dict[int, list[Any]] = {size: [] for size in lengths}
        for request in requests.values():
            await stub.GetContext(request, metadata=md)  # fills the hot window
        for _ in range(3):
            for size, request in requests.items():
                rounds[size].append(
                    await measure(
                        lambda request=request: stub.GetContext(request, metadata=md),
                        concurrency=1,
                        seconds=args.seconds / 3,
                    )
                )
        results = {size: sorted(r, key=lambda x: x.p50_ms)[1] for size, r in rounds.items()}
        for size, request in requests.items():
            kept = await stub.GetContext(request, metadata=md)
            print(
                f"GetContext {size:>7} messages: p50 {results[size].p50_ms:7.3f} ms (median of 3 alternating rounds)"
                f"  ({len(kept.messages) - 1} messages, {kept.total_tokens} tokens kept of budget 4000)"
            )
        ratio = results[args.history].p50_ms / results[100].p50_ms
        print(f"GetContext p50 ratio {args.history} / 100 messages: {ratio:.2f} (target <= 1.2)")
        figures.append(
            figure(
                f"GetContext p50, {args.history:,} against 100 messages (budget 4,000 tokens)",
                f"100 messages p50 {results[100].p50_ms:.2f} ms; {args.history:,} messages p50 "
                f"{results[args.history].p50_ms:.2f} ms (median of 3 alternating rounds)",
                ratio,
                f"p50 {args.history:,} / 100 messages",
                at_most=1.2,
            )
        )
        big = pb.GetContextRequest(conversation_id=lengths[args.history], token_budget=60_000)
        deep = await measure(lambda: stub.GetContext(big, metadata=md), concurrency=1, seconds=args.seconds)
        print(
            f"GetContext {args.history} messages, budget 60000 (past the hot window): p50 {deep.p50_ms:7.3f} ms"
        )

        # 3. Search over a corpus.
        search_tenant = "bench-search"
        smd = (("authorization", f"Bearer {_token(key, search_tenant, 'reader')}"),)
        per_conv = 1000
        started = time.perf_counter()
        n_convs = max(1, args.messages // per_conv)
        for i in range(n_convs):
            cid = (
                await stub.CreateConversation(
                    pb.CreateConversationRequest(agent_id=f"a{i % 5}"), metadata=smd
                )
            ).conversation.id
            await asyncio.to_thread(
                _copy_messages,
                dsn,
                _history_rows(cid, search_tenant, 1, min(per_conv, args.messages - i * per_conv), words),
            )
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("ANALYZE messages")
        corpus = n_convs * per_conv if args.messages >= per_conv else args.messages
        print(
            f"search corpus: {corpus} messages in {n_convs} conversations (setup {time.perf_counter() - started:.1f} s)"
        )
        counts = {}
        rare, common = words[5000], words[0]
        with psycopg.connect(dsn) as conn:
            for w in (rare, common):
                counts[w] = conn.execute(
                    "SELECT count(*) FROM messages WHERE tenant_id = %s"
                    " AND to_tsvector('simple', content) @@ to_tsquery('simple', %s)",
                    (search_tenant, w),
                ).fetchone()[0]
        searched = {}
        for label, q in (
            ("a rare word", rare),
            ("rare AND frequent", f"{rare} {common}"),
            ("the most frequent word", common),
        ):
            request = pb.SearchConversationsRequest(query=q, page_size=10)
            result = await measure(
                lambda request=request: stub.SearchConversations(request, metadata=smd),
                concurrency=1,
                seconds=args.seconds,
            )
            hits = len((await stub.SearchConversations(request, metadata=smd)).results)
            matching = counts.get(q, "?")
            print(
                f"Search {label:<22} p50 {result.p50_ms:8.3f} ms  p99 {result.p99_ms:8.3f} ms"
                f"  ({matching} matching messages, page of {hits})"
            )
            searched[label] = (result, matching)
        (rare_r, rare_n), (common_r, common_n) = searched["a rare word"], searched["the most frequent word"]
        figures.append(
            figure(
                f"SearchConversations over {corpus:,} messages (one tenant, page of 10)",
                f"a rare word ({rare_n} matches) p50 {rare_r.p50_ms:.2f} ms p99 {rare_r.p99_ms:.2f} ms; "
                f"the most frequent word ({common_n} matches) p50 {common_r.p50_ms:.2f} ms "
                f"p99 {common_r.p99_ms:.2f} ms; rare AND frequent p50 "
                f"{searched['rare AND frequent'][0].p50_ms:.2f} ms",
                common_r.p50_ms / rare_r.p50_ms,
                "p50 most frequent word / rare word",
            )
        )
        figures += await _branches(
            stub, md, dsn, runtime, tenant, words, path=min(1000, args.history), seconds=args.seconds
        )
        await channel.close()
    finally:
        await stop_children(*children)
        if workdir is not None:
            workdir.cleanup()
        if server is not None:
            await server.stop(0)
        await runtime.close()
        if own_database:
            with psycopg.connect(PG_SERVER, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return figures


if __name__ == "__main__":
    asyncio.run(main())
