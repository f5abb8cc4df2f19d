import asyncio

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
        first.append((await _next(replies)).event)
    assert "".join(e.text_delta for e in first) == "Echo: hi there"
    # A long run; a second message under REJECT is answered with an error and the stream stays open.
    await requests.put(pb.ChatRequest(message=pb.ChatMessage(text=" ".join(["w"] * 200), request_id="m2")))
    reply = await _next(replies)
    long_run = reply.event.run_id
    await requests.put(
        pb.ChatRequest(
            message=pb.ChatMessage(text="again", request_id="m3", busy_policy=apb.BUSY_POLICY_REJECT)
        )
    )
    while not (reply := await _next(replies)).HasField("error"):
        pass
    assert reply.error.code == "FAILED_PRECONDITION" and reply.request_id == "m3"
    # A run started by another client of the same session shows up too? Not while busy; cancel first.
    await requests.put(pb.ChatRequest(cancel=pb.ChatCancel()))
    while (reply := await _next(replies)).event.type != T.RUN_EVENT_TYPE_RUN_CANCELLED:
        pass
    assert reply.event.run_id == long_run
    # A run started elsewhere (a SendMessage on the same session) reaches this stream as well.
    other = await mesh.send(session.id, "from elsewhere")
    seen = []
    while not seen or seen[-1].type != T.RUN_EVENT_TYPE_RUN_COMPLETED:
        seen.append((await _next(replies)).event)
    assert [e.event_id for e in seen] == [e.event_id for e in other]
    # Resume the first run from event 2.
    await requests.put(pb.ChatRequest(resume=pb.ChatResume(run_id=first[0].run_id, after_event_id=2)))
    resumed = []
    while not resumed or resumed[-1].type != T.RUN_EVENT_TYPE_RUN_COMPLETED:
        resumed.append((await _next(replies)).event)
    assert [e.event_id for e in resumed] == [e.event_id for e in first[2:]]
    await requests.put(None)
    assert [r async for r in replies] == []
