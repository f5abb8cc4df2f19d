"""Issue 16 through orchestration on real servers: usage on the run and the stored answer (provider
and estimated), model fallback (429, connect failure, none after the first token), model override,
and with the real conversation service on PostgreSQL: GetUsage equals the runs' usage, the quota
refuses the next run with its reset time, and 20 concurrent runs at the quota's edge overrun it by
at most the runs already admitted."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from agentmesh.conversation.v1 import conversation_service_pb2 as cpb
from agentmesh.orchestration.v1 import orchestration_service_pb2 as pb
from services.conversation.models import QuotaLimit
from services.identity.operator import operator_principal
from services.orchestration.providers import EchoProvider, OpenAIProvider, Providers
from services.orchestration.worker import metered
from tests.helpers import free_port
from tests.orchestration.conftest import RealMesh
from tests.orchestration.fakes import assistant_messages
from tests.orchestration.sse_server import SseServer

T = pb.RunEventType


@pytest.fixture
async def sse():
    server = SseServer()
    url = await server.start()
    yield server, url
    await server.stop()


def _providers(url: str) -> Providers:
    def openai(base: str) -> OpenAIProvider:
        return OpenAIProvider(base_url=base, connect_timeout=0.5, read_timeout=2.0, retries=0)

    return Providers(
        {
            "echo": EchoProvider(),
            "openai": openai(url),
            # Nothing listens there: a connect failure.
            "dead": openai(f"http://127.0.0.1:{free_port()}/v1"),
        }
    )


async def _run_of(mesh, events: list[pb.RunEvent]) -> pb.Run:
    reply = await mesh.stub.GetRun(pb.GetRunRequest(run_id=events[0].run_id), metadata=mesh.md())
    return reply.run


async def test_provider_reported_usage_on_run_event_and_stored_answer(make_mesh, sse):
    _server, url = sse
    mesh = await make_mesh(providers=_providers(url))
    session = await mesh.session(model="openai:ok")
    events = await mesh.send(session.id, "hi")
    assert events[-1].type == T.RUN_EVENT_TYPE_RUN_COMPLETED
    run = await _run_of(mesh, events)
    for usage in (run.usage, events[-1].usage):
        assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (7, 5, 12)
        assert usage.source == pb.USAGE_SOURCE_PROVIDER
        assert usage.model == "openai:ok"
    assert run.model == "openai:ok" and not run.fallbacks
    stored = assistant_messages(mesh.conversation)[-1].usage
    assert (stored.prompt_tokens, stored.completion_tokens, stored.model) == (7, 5, "openai:ok")
    assert stored.source == cpb.USAGE_SOURCE_PROVIDER and stored.run_id == run.id


async def test_usage_is_estimated_when_the_provider_reports_none(make_mesh, sse):
    _server, url = sse
    mesh = await make_mesh(providers=_providers(url))
    session = await mesh.session(model="openai:no-usage")
    events = await mesh.send(session.id, "hi")
    run = await _run_of(mesh, events)
    # conversation's counter: ceil(chars / 4) + 4 per message.
    assert run.usage.completion_tokens == -(-len("Hello from the model.") // 4) + 4
    assert run.usage.prompt_tokens > 0
    assert run.usage.source == pb.USAGE_SOURCE_ESTIMATED
    stored = assistant_messages(mesh.conversation)[-1].usage
    assert stored.source == cpb.USAGE_SOURCE_ESTIMATED
    assert stored.completion_tokens == run.usage.completion_tokens


@pytest.mark.parametrize(
    ("first", "code"), [("openai:rate-limited", "RESOURCE_EXHAUSTED"), ("dead:any", "UNAVAILABLE")]
)
async def test_fallback_before_the_first_token(make_mesh, sse, first, code):
    _server, url = sse
    mesh = await make_mesh(providers=_providers(url))
    session = await mesh.session(model=first, fallback_models=["openai:down", "openai:ok"])
    events = await mesh.send(session.id, "hi")
    assert events[-1].type == T.RUN_EVENT_TYPE_RUN_COMPLETED
    assert "".join(e.text_delta for e in events) == "Hello from the model."
    run = await _run_of(mesh, events)
    for record in (run, events[-1]):
        assert record.model == "openai:ok"
        assert [f.model for f in record.fallbacks] == [first, "openai:down"]
        assert record.fallbacks[0].reason.startswith(code + ":")
        assert record.fallbacks[1].reason.startswith("UNAVAILABLE:")
    assert run.usage.model == "openai:ok"


async def test_no_fallback_after_the_first_token(make_mesh, sse):
    server, url = sse
    mesh = await make_mesh(providers=_providers(url))
    session = await mesh.session(model="openai:fail-mid", fallback_models=["openai:ok"])
    events = await mesh.send(session.id, "hi")
    assert events[-1].type == T.RUN_EVENT_TYPE_RUN_FAILED
    assert events[-1].final_message == "Hello from"
    assert [r["model"] for r in server.requests] == ["fail-mid"]
    run = await _run_of(mesh, events)
    assert not run.fallbacks and run.state == pb.RUN_STATE_FAILED


async def test_model_override_allowed(make_mesh, sse):
    _server, url = sse
    mesh = await make_mesh(providers=_providers(url))
    session = await mesh.session(model="echo:default", allow_model_override=True)
    events = await mesh.send(session.id, "hi", model_override="openai:ok")
    run = await _run_of(mesh, events)
    assert run.model_override == "openai:ok" and run.model == "openai:ok"
    assert "".join(e.text_delta for e in events) == "Hello from the model."


@pytest.mark.parametrize(
    ("allow", "tier", "model", "reason"),
    [
        (False, "pro", "openai:ok", "MODEL_OVERRIDE_NOT_ALLOWED"),
        (True, "free", "openai:gpt-4o", "MODEL_NOT_ALLOWED"),
    ],
)
async def test_model_override_refused(make_mesh, sse, allow, tier, model, reason):
    _server, url = sse
    mesh = await make_mesh(providers=_providers(url))
    session = await mesh.session(model="echo:default", allow_model_override=allow)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await mesh.send(session.id, "hi", model_override=model, metadata=mesh.md(tier=tier))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason in _details(caught.value)
    runs = await mesh.stub.ListRuns(pb.ListRunsRequest(session_id=session.id), metadata=mesh.md())
    assert not runs.runs


def _details(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    return str(status)


def test_metered_marks_the_source():
    assert metered(None, [], "abcd", model="m", duration_ms=1).source == "ESTIMATED"


# With the real conversation service (PostgreSQL) --------------------------------------------------


async def _session(mesh: RealMesh) -> str:
    agent_id = mesh.agents.add(mesh.tenant, model="echo:default")
    reply = await mesh.stub.StartSession(pb.StartSessionRequest(agent_id=agent_id), metadata=mesh.md())
    return reply.session.id


async def _send(mesh: RealMesh, session_id: str, text: str) -> list[pb.RunEvent]:
    call = mesh.stub.SendMessage(pb.SendMessageRequest(session_id=session_id, text=text), metadata=mesh.md())
    return [r.event async for r in call]


async def test_get_usage_totals_equal_the_runs_usage(real_mesh):
    session_id = await _session(real_mesh)
    totals = 0
    for text in ("one", "two words", "three words here"):
        events = await _send(real_mesh, session_id, text)
        assert events[-1].type == T.RUN_EVENT_TYPE_RUN_COMPLETED
        assert events[-1].usage.source == pb.USAGE_SOURCE_PROVIDER
        totals += events[-1].usage.total_tokens
    reply = await real_mesh.conv.GetUsage(cpb.GetUsageRequest(), metadata=real_mesh.md())
    assert reply.totals.total_tokens == totals > 0


async def test_quota_refuses_the_next_run_and_says_when_it_resets(real_mesh):
    await real_mesh.conversation_service.set_quota(
        operator_principal(), real_mesh.tenant, QuotaLimit(tokens=1)
    )
    session_id = await _session(real_mesh)
    # The first run is admitted (nothing used yet) and finishes its answer past the quota.
    events = await _send(real_mesh, session_id, "hello there")
    assert events[-1].type == T.RUN_EVENT_TYPE_RUN_COMPLETED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _send(real_mesh, session_id, "again")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    failures = [d for d in status.details if d.Is(error_details_pb2.QuotaFailure.DESCRIPTOR)]
    assert failures, status
    assert "resets at" in caught.value.details()
    runs = await real_mesh.stub.ListRuns(pb.ListRunsRequest(session_id=session_id), metadata=real_mesh.md())
    assert len(runs.runs) == 1


async def test_concurrent_runs_at_the_quota_edge_overrun_by_at_most_the_admitted_runs(real_mesh):
    """20 sessions send at once with 1 token of quota left: every run admitted before the first
    answer was stored may finish; none admitted after. The overrun is measured and bounded."""
    sessions = [await _session(real_mesh) for _ in range(20)]
    # One warm-up run tells the quota's size from a real answer.
    first = await _send(real_mesh, sessions[0], "warm up")
    per_run = first[-1].usage.total_tokens
    await real_mesh.conversation_service.set_quota(
        operator_principal(), real_mesh.tenant, QuotaLimit(tokens=per_run + 1)
    )

    async def attempt(session_id: str) -> int:
        """The admitted run's tokens; 0 when refused."""
        try:
            events = await _send(real_mesh, session_id, "warm up")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            return 0
        assert events[-1].type == T.RUN_EVENT_TYPE_RUN_COMPLETED
        return events[-1].usage.total_tokens

    used_by = [u for u in await asyncio.gather(*(attempt(s) for s in sessions)) if u]
    reply = await real_mesh.conv.GetUsage(cpb.GetUsageRequest(), metadata=real_mesh.md())
    overrun = reply.quota.used_tokens - reply.quota.limit_tokens
    print(f"quota edge: admitted {len(used_by)} of 20, overrun {overrun} tokens ({per_run} per run)")
    assert used_by
    # Every admitted run was admitted while usage was under the limit (the refused ones were not
    # admitted at all), so the overrun is at most what the admitted runs used.
    assert 0 < overrun <= sum(used_by)
    # And afterwards nothing more is admitted.
    assert not await attempt(sessions[0])
