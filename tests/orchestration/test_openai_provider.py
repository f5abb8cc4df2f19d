import pytest

from agentmesh.orchestration.v1 import orchestration_service_pb2 as pb
from services.orchestration.models import Usage
from services.orchestration.providers import ChatMessage, ModelConfig, OpenAIProvider, ProviderError
from tests.orchestration.fakes import assistant_messages
from tests.orchestration.sse_server import SseServer

T = pb.RunEventType


@pytest.fixture
async def sse():
    server = SseServer()
    url = await server.start()
    yield server, url
    await server.stop()


def _provider(url: str, **kw) -> OpenAIProvider:
    return OpenAIProvider(
        base_url=url, api_key="sk-test", connect_timeout=1.0, read_timeout=0.5, retry_backoff=0.01, **kw
    )


async def _collect(provider, model):
    return [
        d
        async for d in provider.stream(ModelConfig(model=model, temperature=0.2), [ChatMessage("user", "hi")])
    ]


async def test_streams_deltas_and_usage(sse):
    server, url = sse
    provider = _provider(url)
    try:
        deltas = await _collect(provider, "ok")
    finally:
        await provider.close()
    assert "".join(d.text for d in deltas) == "Hello from the model."
    assert deltas[-1].usage == Usage(7, 5)
    assert server.requests[0]["stream"] is True
    assert server.requests[0]["temperature"] == 0.2
    assert server.requests[0]["messages"] == [{"role": "user", "content": "hi"}]
    assert server.headers[0]["authorization"] == "Bearer sk-test"


async def test_failure_before_the_first_token_is_retried(sse):
    server, url = sse
    provider = _provider(url)
    try:
        deltas = await _collect(provider, "flaky")
    finally:
        await provider.close()
    assert "".join(d.text for d in deltas) == "Hello from the model."
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    ("model", "code", "words"),
    [("fail-mid", "UNAVAILABLE", "closed the connection"), ("stall", "DEADLINE_EXCEEDED", "sent nothing")],
)
async def test_failure_after_the_first_token_is_not_retried(sse, model, code, words):
    server, url = sse
    provider = _provider(url)
    seen = []
    try:
        with pytest.raises(ProviderError) as err:
            async for delta in provider.stream(ModelConfig(model=model), [ChatMessage("user", "hi")]):
                seen.append(delta.text)
    finally:
        await provider.close()
    assert seen == ["Hello", " from"]
    assert err.value.code == code
    assert words in err.value.message
    assert len(server.requests) == 1


async def test_http_errors_are_clear(sse):
    _, url = sse
    provider = _provider(url)
    try:
        with pytest.raises(ProviderError) as err:
            await _collect(provider, "unauthorized")
    finally:
        await provider.close()
    assert err.value.code == "UNAUTHENTICATED"
    assert "HTTP 401" in err.value.message


async def test_runs_through_the_service_success_and_mid_stream_failure(sse, make_mesh):
    from services.orchestration.providers import EchoProvider, Providers

    _, url = sse
    mesh = await make_mesh(providers=Providers({"openai": _provider(url), "echo": EchoProvider()}))
    ok = await mesh.send((await mesh.session(model="openai:ok")).id, "hi")
    assert ok[-1].type == T.RUN_EVENT_TYPE_RUN_COMPLETED
    assert ok[-1].usage.completion_tokens == 5
    failed = await mesh.send((await mesh.session(model="openai:fail-mid")).id, "hi")
    assert failed[-1].type == T.RUN_EVENT_TYPE_RUN_FAILED
    assert failed[-1].error.code == "UNAVAILABLE"
    assert "mid-answer" in failed[-1].error.message
    stored = assistant_messages(mesh.conversation)
    assert [m.content for m in stored] == ["Hello from the model.", "Hello from"]
    assert stored[1].metadata["partial"] == "true"
    run = (await mesh.stub.GetRun(pb.GetRunRequest(run_id=failed[0].run_id), metadata=mesh.md())).run
    assert run.state == pb.RUN_STATE_FAILED and run.error.code == "UNAVAILABLE"
