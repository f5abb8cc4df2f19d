"""Tools through the providers: openai against the local SSE server (the real chunk format), echo's
`echo:tools` model."""

from __future__ import annotations

import json

import pytest

from services.orchestration.models import Usage
from services.orchestration.providers import (
    ChatMessage,
    EchoProvider,
    ModelConfig,
    OpenAIProvider,
    ToolCall,
    ToolSpec,
)
from tests.orchestration.sse_server import SseServer

WEATHER = ToolSpec(
    "get_weather",
    "The weather in a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
TIME = ToolSpec("get_time")


@pytest.fixture
async def openai():
    server = SseServer()
    url = await server.start()
    provider = OpenAIProvider(base_url=url, connect_timeout=1.0, read_timeout=2.0, retry_backoff=0.01)
    yield server, provider
    await provider.close()
    await server.stop()


async def test_parallel_calls_put_together_from_interleaved_pieces(openai):
    server, provider = openai
    config = ModelConfig(model="tools", tools=(WEATHER, TIME))
    deltas = [d async for d in provider.stream(config, [ChatMessage("user", "weather and time?")])]
    assert "".join(d.text for d in deltas) == ""
    calls = [c for d in deltas for c in d.tool_calls]
    assert calls == [
        ToolCall("call_a", "get_weather", '{"city": "Paris"}'),
        ToolCall("call_b", "get_time", '{"tz": "UTC"}'),
    ]
    # Whole calls arrive once, with the usage, on the last delta.
    assert deltas[-1].tool_calls == tuple(calls) and deltas[-1].usage == Usage(11, 9)
    sent = server.requests[0]
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city.",
                "parameters": WEATHER.parameters,
            },
        },
        {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
    ]


async def test_results_go_back_after_the_assistant_message_with_its_calls(openai):
    server, provider = openai
    calls = (ToolCall("call_a", "get_weather", '{"city": "Paris"}'), ToolCall("call_b", "get_time", "{}"))
    history = [
        ChatMessage("system", "be brief"),
        ChatMessage("user", "weather and time?"),
        ChatMessage("assistant", "", tool_calls=calls),
        ChatMessage("tool", '{"sky": "clear"}', tool_call_id="call_a"),
        ChatMessage("tool", '"12:00"', tool_call_id="call_b"),
    ]
    config = ModelConfig(model="tools", tools=(WEATHER, TIME))
    deltas = [d async for d in provider.stream(config, history)]
    assert "".join(d.text for d in deltas) == 'Results: {"sky": "clear"}; "12:00"'
    assert all(not d.tool_calls for d in deltas)
    assert server.requests[0]["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "weather and time?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {"id": "call_b", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": '{"sky": "clear"}'},
        {"role": "tool", "tool_call_id": "call_b", "content": '"12:00"'},
    ]


async def test_no_tools_field_without_tools(openai):
    server, provider = openai
    [d async for d in provider.stream(ModelConfig(model="ok"), [ChatMessage("user", "hi")])]
    assert "tools" not in server.requests[0]


async def _echo(config: ModelConfig, messages: list[ChatMessage]):
    return [d async for d in EchoProvider().stream(config, messages)]


async def test_echo_tools_calls_every_tool_in_order_with_the_user_text():
    deltas = await _echo(ModelConfig(model="tools", tools=(WEATHER, TIME)), [ChatMessage("user", "Paris?")])
    assert [d.tool_calls for d in deltas] == [
        (
            ToolCall("call_1_0", "get_weather", json.dumps({"text": "Paris?"})),
            ToolCall("call_1_1", "get_time", json.dumps({"text": "Paris?"})),
        )
    ]
    assert deltas[0].text == "" and deltas[0].usage is not None


async def test_echo_tools_answers_the_tool_results():
    calls = (ToolCall("call_1_0", "get_weather", "{}"), ToolCall("call_1_1", "get_time", "{}"))
    history = [
        ChatMessage("user", "Paris?"),
        ChatMessage("assistant", "", tool_calls=calls),
        ChatMessage("tool", "sunny", tool_call_id="call_1_0"),
        ChatMessage("tool", "noon", tool_call_id="call_1_1"),
    ]
    deltas = await _echo(ModelConfig(model="tools", tools=(WEATHER, TIME)), history)
    assert "".join(d.text for d in deltas) == "Tool results: sunny; noon"
    assert all(not d.tool_calls for d in deltas)


async def test_echo_without_the_tools_model_or_without_tools_just_echoes():
    for config in (ModelConfig(model="default", tools=(WEATHER,)), ModelConfig(model="tools")):
        deltas = await _echo(config, [ChatMessage("user", "hi")])
        assert "".join(d.text for d in deltas) == "Echo: hi"
        assert all(not d.tool_calls for d in deltas)
