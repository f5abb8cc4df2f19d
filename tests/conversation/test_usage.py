"""Usage on real PostgreSQL: the aggregates equal the messages' usage under concurrent appends from
two instances, survive a Redis flush, are priced at append time, and feed GetUsage and the quota."""

from __future__ import annotations

import asyncio
import datetime
import random
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from agentmesh.conversation.v1 import conversation_service_pb2 as pb
from services import conversation
from services.conversation.models import QuotaLimit
from services.identity.operator import operator_principal
from services.platform import errors
from tests.helpers import build_runtime, flush_redis, start_server

A = pb.MESSAGE_ROLE_ASSISTANT


def answer(prompt: int, completion: int, model: str = "echo:test", **kw: Any) -> pb.Message:
    usage = pb.MessageUsage(prompt_tokens=prompt, completion_tokens=completion, model=model, **kw)
    return pb.Message(role=A, content="an answer", usage=usage)


def bad_fields(exc: grpc.RpcError) -> dict[str, str]:
    status = errors.status_proto_of(exc)
    out: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out.update({v.field: v.description for v in bad.field_violations})
    return out


async def test_concurrent_appends_from_two_instances_sum_exactly_and_survive_a_redis_flush(
    serve, settings, keys, make_caller, tenant, flushable_redis_url
):
    first = await serve("conversation")
    other_runtime = await build_runtime(settings, keys)
    second = await start_server(other_runtime, "conversation")
    try:
        callers = [
            make_caller(server.channel, tenant, user)
            for server in (first, second)
            for user in ("alice", "bob")
        ]
        # A few conversations per caller, so appends to one conversation and one aggregate row race.
        convs = {id(c): [(await c.create(agent_id=f"agent-{i % 2}")).id for i in range(3)] for c in callers}
        rng = random.Random(7)
        jobs = []
        for n in range(50):
            caller = callers[n % len(callers)]
            model = ("echo:a", "echo:b")[n % 3 == 0]
            msg = answer(rng.randint(1, 500), rng.randint(1, 500), model, tool_calls=n % 2)
            jobs.append(
                caller.call("AppendMessage", conversation_id=rng.choice(convs[id(caller)]), message=msg)
            )
        stored = [r.message.usage for r in await asyncio.gather(*jobs)]
        assert all(
            u.user_id in ("alice", "bob") and u.total_tokens == u.prompt_tokens + u.completion_tokens
            for u in stored
        )

        owner = make_caller(first.channel, tenant, "olga", roles=("owner",))
        usage = await owner.call("GetUsage", group_by=[pb.USAGE_GROUPING_USER, pb.USAGE_GROUPING_MODEL])
        assert usage.totals.messages == 50
        assert usage.totals.prompt_tokens == sum(u.prompt_tokens for u in stored)
        assert usage.totals.completion_tokens == sum(u.completion_tokens for u in stored)
        assert usage.totals.tool_calls == sum(u.tool_calls for u in stored)
        by_key = {(r.user_id, r.model): r.total_tokens for r in usage.rows}
        expected: dict[tuple[str, str], int] = {}
        for u in stored:
            expected[(u.user_id, u.model)] = expected.get((u.user_id, u.model), 0) + u.total_tokens
        assert by_key == expected
        assert usage.quota.used_tokens == usage.totals.total_tokens

        flush_redis(flushable_redis_url)
        again = await owner.call("GetUsage", group_by=[pb.USAGE_GROUPING_USER, pb.USAGE_GROUPING_MODEL])
        assert again == usage
    finally:
        await second.close()
        await other_runtime.close()


async def test_a_price_change_leaves_stored_costs_alone(serve, runtime, make_caller, tenant):
    built = await conversation.build(runtime)
    running = await serve(built.registration)
    model = f"echo:priced-{tenant}"
    operator = operator_principal("test")
    # 2.50 and 10.00 per million tokens.
    await built.service.set_price(operator, model, input_micros=2_500_000, output_micros=10_000_000)
    alice = make_caller(running.channel, tenant, "alice")
    conv = await alice.create()
    old = (
        await alice.call("AppendMessage", conversation_id=conv.id, message=answer(1000, 200, model))
    ).message
    assert old.usage.cost_micros == 1000 * 2_500_000 // 1_000_000 + 200 * 10_000_000 // 1_000_000  # 4500
    await built.service.set_price(operator, model, input_micros=5_000_000, output_micros=20_000_000)
    new = (
        await alice.call("AppendMessage", conversation_id=conv.id, message=answer(1000, 200, model))
    ).message
    assert new.usage.cost_micros == 9_000
    listed = await alice.call("ListMessages", conversation_id=conv.id)
    assert [m.usage.cost_micros for m in listed.messages] == [4_500, 9_000]
    usage = await alice.call("GetUsage", model=model)
    assert usage.totals.cost_micros == 13_500
    assert [
        (p.model, p.input_micros) for p in await built.service.list_prices(operator) if p.model == model
    ] == [(model, 5_000_000)]


async def test_the_quota_refuses_once_used_up_and_says_when_it_resets(serve, runtime, make_caller, tenant):
    built = await conversation.build(runtime)
    running = await serve(built.registration)
    alice = make_caller(running.channel, tenant, "alice", tier="free")
    fresh = await alice.call("CheckQuota")
    assert (fresh.quota.limit_tokens, fresh.quota.used_tokens) == (200_000, 0)  # the free tier's
    await built.service.set_quota(operator_principal("test"), tenant, QuotaLimit(tokens=1_000))
    conv = await alice.create()
    await alice.call("AppendMessage", conversation_id=conv.id, message=answer(600, 300))
    left = await alice.call("CheckQuota")
    assert (left.quota.limit_tokens, left.quota.used_tokens, left.quota.remaining_tokens) == (1_000, 900, 100)
    await alice.call("AppendMessage", conversation_id=conv.id, message=answer(50, 50))
    with pytest.raises(grpc.RpcError) as caught:
        await alice.call("CheckQuota")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    now = datetime.datetime.now(datetime.UTC)
    reset = (now.replace(day=1) + datetime.timedelta(days=32)).replace(day=1).strftime("%Y-%m-%dT00:00:00Z")
    assert reset in caught.value.details()
    status = errors.status_proto_of(caught.value)
    quota_failure = error_details_pb2.QuotaFailure()
    assert any(d.Unpack(quota_failure) for d in status.details if d.Is(quota_failure.DESCRIPTOR))
    assert [v.subject for v in quota_failure.violations] == ["monthly_tokens"]
    usage = await alice.call("GetUsage")
    assert usage.quota.reset_time.ToJsonString() == reset


async def test_get_usage_filters_groups_and_refuses_bad_input(serve, make_caller, tenant):
    running = await serve("conversation")
    alice = make_caller(running.channel, tenant, "alice")
    bob = make_caller(running.channel, tenant, "bob")
    owner = make_caller(running.channel, tenant, "olga", roles=("owner",))
    a1 = await alice.create(agent_id="agent-1")
    b2 = await bob.create(agent_id="agent-2")
    await alice.call("AppendMessage", conversation_id=a1.id, message=answer(10, 20, "echo:x"))
    await alice.call("AppendMessage", conversation_id=a1.id, message=answer(1, 2, "echo:y"))
    await bob.call("AppendMessage", conversation_id=b2.id, message=answer(100, 200, "echo:x"))
    # No usage on a user message: no row.
    await alice.append(a1.id, "hello")

    by_agent = await owner.call("GetUsage", group_by=[pb.USAGE_GROUPING_AGENT])
    assert [(r.agent_id, r.total_tokens, r.user_id) for r in by_agent.rows] == [
        ("agent-1", 33, ""),
        ("agent-2", 300, ""),
    ]
    assert (await owner.call("GetUsage", model="echo:x")).totals.total_tokens == 330
    assert (await owner.call("GetUsage", user_id="bob")).totals.total_tokens == 300
    # A member sees their own usage only, whatever user they name.
    assert (await alice.call("GetUsage")).totals.total_tokens == 33
    assert (await alice.call("GetUsage", user_id="bob")).totals.total_tokens == 0
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    by_day = await owner.call("GetUsage", group_by=[pb.USAGE_GROUPING_DAY])
    assert [(r.day, r.messages) for r in by_day.rows] == [(today, 3)]
    # A period that ends before today's usage counts none of it.
    earlier = pb.GetUsageRequest()
    earlier.start_time.FromJsonString("2020-01-01T00:00:00Z")
    earlier.end_time.FromJsonString("2020-02-01T00:00:00Z")
    assert (await owner.call("GetUsage", earlier)).totals.messages == 0

    cases: list[tuple[dict[str, Any], str]] = [
        ({"group_by": [99]}, "group_by[0]"),
        ({"group_by": [pb.USAGE_GROUPING_UNSPECIFIED]}, "group_by[0]"),
        ({"group_by": [pb.USAGE_GROUPING_DAY, pb.USAGE_GROUPING_DAY]}, "group_by[1]"),
    ]
    for fields, field in cases:
        with pytest.raises(grpc.RpcError) as caught:
            await owner.call("GetUsage", **fields)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in bad_fields(caught.value)
    not_midnight = pb.GetUsageRequest()
    not_midnight.start_time.FromJsonString("2020-01-01T10:00:00Z")
    backwards = pb.GetUsageRequest()
    backwards.start_time.FromJsonString("2020-02-01T00:00:00Z")
    backwards.end_time.FromJsonString("2020-01-01T00:00:00Z")
    for request, field in ((not_midnight, "start_time"), (backwards, "end_time")):
        with pytest.raises(grpc.RpcError) as caught:
            await owner.call("GetUsage", request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in bad_fields(caught.value)
    with pytest.raises(grpc.RpcError) as caught:
        await owner.call("GetUsage", tenant="someone-else")
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

    # Usage on anything but an assistant message, or with a bad model, is refused and stores nothing.
    before = await owner.call("GetUsage")
    wrong_role = pb.Message(role=pb.MESSAGE_ROLE_USER, content="hi", usage=pb.MessageUsage(model="echo:x"))
    no_model = answer(1, 1, model="")
    negative = answer(-1, 1)
    for message, field in (
        (wrong_role, "message.usage"),
        (no_model, "message.usage.model"),
        (negative, "message.usage.prompt_tokens"),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            await alice.call("AppendMessage", conversation_id=a1.id, message=message)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in bad_fields(caught.value)
    assert await owner.call("GetUsage") == before
