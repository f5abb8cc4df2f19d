import asyncio

from google.rpc import code_pb2, error_details_pb2

from agentmesh.agents.v1 import agents_service_pb2 as apb
from agentmesh.orchestration.v1 import orchestration_service_pb2 as pb

T = pb.RunEventType


async def _next(replies):
    return await asyncio.wait_for(anext(replies), 5)


async def test_chat_streams_every_run_rejects_without_closing_and_cancels(make_mesh):
    mesh = await make_mesh(echo_delay=0.02)
    session = await mesh.session()
    requests: asyncio.Queue = asyncio.Queue()

    async def outgoing():
        while (item := await requests.get()) is not None:
            yield item

    call = mesh.stub.Chat(outgoing(), metadata=mesh.md())
    replies = aiter(call)
    await requests.put(
        pb.ChatRequest(session_id=session.id, message=pb.ChatMessage(text="hi there", request_id="m1"))
    )
    first = []
    while not first or first[-1].type != T.RUN_EVENT_TYPE_RUN_COMPLETED:
        first.append((await _next(replies)).run_event)
    assert "".join(e.text_delta for e in first) == "Echo: hi there"
    # A long run; a second message under REJECT is answered with an error and the stream stays open.
    await requests.put(pb.ChatRequest(message=pb.ChatMessage(text=" ".join(["w"] * 200), request_id="m2")))
    reply = await _next(replies)
    long_run = reply.run_event.run_id
    await requests.put(
        pb.ChatRequest(
            message=pb.ChatMessage(text="again", request_id="m3", busy_policy=apb.BUSY_POLICY_REJECT)
        )
    )
    while (reply := await _next(replies)).WhichOneof("payload") != "status":
        pass
    assert reply.status.code == code_pb2.FAILED_PRECONDITION and reply.request_id == "m3"
    # A run started by another client of the same session shows up too? Not while busy; cancel first.
    await requests.put(pb.ChatRequest(cancel=pb.ChatCancel()))
    while (reply := await _next(replies)).run_event.type != T.RUN_EVENT_TYPE_RUN_CANCELLED:
        pass
    assert reply.run_event.run_id == long_run
    # A run started elsewhere (a SendMessage on the same session) reaches this stream as well.
    other = await mesh.send(session.id, "from elsewhere")
    seen = []
    while not seen or seen[-1].type != T.RUN_EVENT_TYPE_RUN_COMPLETED:
        seen.append((await _next(replies)).run_event)
    assert [e.event_id for e in seen] == [e.event_id for e in other]
    # Resume the first run from event 2.
    await requests.put(pb.ChatRequest(resume=pb.ChatResume(run_id=first[0].run_id, after_event_id=2)))
    resumed = []
    while not resumed or resumed[-1].type != T.RUN_EVENT_TYPE_RUN_COMPLETED:
        resumed.append((await _next(replies)).run_event)
    assert [e.event_id for e in resumed] == [e.event_id for e in first[2:]]
    await requests.put(None)
    assert [r async for r in replies] == []


def _detail(status, kind):
    found = [d for d in status.details if d.Is(kind.DESCRIPTOR)]
    assert found, f"no {kind.DESCRIPTOR.name} in {status}"
    out = kind()
    found[0].Unpack(out)
    return out


async def _status(replies, request_id):
    """The next rejection, skipping run events; a response never carries both."""
    while True:
        reply = await _next(replies)
        assert not (reply.HasField("event") or reply.HasField("error")), "deprecated fields are not set"
        if reply.WhichOneof("payload") == "status":
            assert reply.request_id == request_id
            return reply.status


def _chat(mesh, md):
    requests: asyncio.Queue = asyncio.Queue()

    async def outgoing():
        while (item := await requests.get()) is not None:
            yield item

    return requests, mesh.stub.Chat(outgoing(), metadata=md)


async def test_chat_rejections_are_the_statuses_unary_calls_return(make_mesh):
    mesh = await make_mesh(echo_delay=0.02)
    md = mesh.md(tier="free")  # two concurrent runs
    busy, full = await mesh.session(), await mesh.session()
    requests, call = _chat(mesh, md)
    replies = aiter(call)
    long_text = " ".join(["w"] * 200)
    await requests.put(pb.ChatRequest(session_id=busy.id, message=pb.ChatMessage(text=long_text)))
    assert (await _next(replies)).run_event.type == T.RUN_EVENT_TYPE_RUN_CREATED

    reject = pb.ChatMessage(text="again", request_id="m-busy", busy_policy=apb.BUSY_POLICY_REJECT)
    await requests.put(pb.ChatRequest(message=reject))
    status = await _status(replies, "m-busy")
    assert status.code == code_pb2.FAILED_PRECONDITION
    assert _detail(status, error_details_pb2.ErrorInfo).reason == "SESSION_BUSY"
    assert _detail(status, error_details_pb2.PreconditionFailure).violations[0].type == "SESSION_BUSY"

    await requests.put(pb.ChatRequest(message=pb.ChatMessage(text="  ", request_id="m-empty")))
    status = await _status(replies, "m-empty")
    assert status.code == code_pb2.INVALID_ARGUMENT
    violations = _detail(status, error_details_pb2.BadRequest).field_violations
    assert [(v.field, v.description) for v in violations] == [("text", "must not be empty")]

    # A second run of the tenant (free: two at once), then a third one on another session.
    second = mesh.stub.SendMessage(
        pb.SendMessageRequest(session_id=(await mesh.session()).id, text=long_text), metadata=md
    )
    await anext(aiter(second))
    requests_full, call_full = _chat(mesh, md)
    await requests_full.put(
        pb.ChatRequest(session_id=full.id, message=pb.ChatMessage(text="third", request_id="m-full"))
    )
    status = await _status(aiter(call_full), "m-full")
    assert status.code == code_pb2.RESOURCE_EXHAUSTED
    assert _detail(status, error_details_pb2.RetryInfo).retry_delay.ToNanoseconds() > 0
    for c in (call, second, call_full):
        c.cancel()
    await mesh.orch.runs.shutdown()
