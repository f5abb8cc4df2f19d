"""Structured answers (issue 16) through orchestration on a real server: echo answers schema-valid
JSON; an OpenAI-compatible model gets response_format in the API's form; an invalid answer is asked
again once with the mismatch, then the run fails FAILED_PRECONDITION; the parsed answer is on
MESSAGE_COMPLETED and RUN_COMPLETED; the message's format wins over its agent's; a message's broken
schema is INVALID_ARGUMENT naming the path inside it."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from agentmesh.agents.v1 import agents_service_pb2 as apb
from agentmesh.orchestration.v1 import orchestration_service_pb2 as pb
from services.orchestration.models import ResponseFormat
from services.orchestration.providers import EchoProvider, OpenAIProvider, Providers
from services.orchestration.providers.echo import structured_answer
from services.orchestration.structured import check_answer
from services.platform import errors
from tests.helpers import expect_status
from tests.orchestration.fakes import assistant_messages
from tests.orchestration.sse_server import SseServer

T = pb.RunEventType
X_STRING = {"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}
RICH = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "count": {"type": "integer"},
        "score": {"type": "number"},
        "ok": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "nested": {"type": "object", "properties": {"level": {"enum": ["low", "high"]}}},
    },
    "required": ["name", "count", "ok", "tags", "nested"],
    "additionalProperties": False,
}


def _format(schema: dict[str, Any], name: str = "") -> apb.ResponseFormat:
    struct = struct_pb2.Struct()
    struct.update(schema)
    return apb.ResponseFormat(type=apb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, schema=struct, name=name)


def _structured(event: pb.RunEvent) -> Any:
    assert event.HasField("structured"), event
    return json_format.MessageToDict(event.structured)


def _of(events: list[pb.RunEvent], kind: int) -> list[pb.RunEvent]:
    return [e for e in events if e.type == kind]


@pytest.fixture
async def sse():
    server = SseServer()
    url = await server.start()
    yield server, url
    await server.stop()


def _providers(url: str) -> Providers:
    return Providers(
        {
            "echo": EchoProvider(),
            "openai": OpenAIProvider(base_url=url, connect_timeout=0.5, read_timeout=2.0, retries=0),
        }
    )


def test_echo_builds_each_type_from_the_text():
    value = structured_answer(RICH, "hello")
    assert value == {
        "name": "hello",
        "count": 5,
        "score": 5,
        "ok": True,
        "tags": ["hello"],
        "nested": {"level": "low"},
    }
    assert check_answer(ResponseFormat(json=True, schema=RICH), json.dumps(value)) == (value, "")
    assert structured_answer({"anyOf": [{"const": 3}, {"type": "string"}]}, "t") == 3
    assert structured_answer({"type": ["null", "string"]}, "t") is None


def test_mismatch_names_the_path_and_why():
    fmt = ResponseFormat(json=True, schema=RICH)
    assert check_answer(fmt, "nope")[1].startswith("/: not valid JSON")
    bad = {**structured_answer(RICH, "a"), "count": "many"}
    assert check_answer(fmt, json.dumps(bad)) == (None, "/count: 'many' is not of type 'integer'")


async def test_echo_answers_schema_valid_json_on_both_final_events(make_mesh):
    mesh = await make_mesh()
    session = await mesh.session(response_format=_format(RICH))
    events = await mesh.send(session.id, "hello")
    assert events[-1].type == T.RUN_EVENT_TYPE_RUN_COMPLETED
    [message] = _of(events, T.RUN_EVENT_TYPE_MESSAGE_COMPLETED)
    expected = {
        "name": "hello",
        "count": 5,
        "score": 5,
        "ok": True,
        "tags": ["hello"],
        "nested": {"level": "low"},
    }
    assert json.loads(message.final_message) == expected
    assert _structured(message) == expected
    assert _structured(events[-1]) == expected
    # A stream read again (resume from Redis) carries it too.
    joined = mesh.stub.JoinRun(pb.JoinRunRequest(run_id=events[0].run_id), metadata=mesh.md())
    replayed = [r.event async for r in joined]
    assert _structured(replayed[-1]) == expected


async def test_a_non_object_answer_is_under_value(make_mesh):
    mesh = await make_mesh()
    session = await mesh.session(response_format=_format({"type": "array", "items": {"type": "integer"}}))
    events = await mesh.send(session.id, "four")
    assert _structured(events[-1]) == {"value": [4]}


async def test_the_message_format_wins_over_the_agents(make_mesh):
    mesh = await make_mesh()
    text_agent = await mesh.session()
    events = await mesh.send(text_agent.id, "hi", response_format=_format(X_STRING))
    assert _structured(events[-1]) == {"x": "hi"}
    json_agent = await mesh.session(response_format=_format(RICH))
    text = apb.ResponseFormat(type=apb.RESPONSE_FORMAT_TYPE_TEXT)
    events = await mesh.send(json_agent.id, "hi", response_format=text)
    assert events[-1].type == T.RUN_EVENT_TYPE_RUN_COMPLETED
    assert _of(events, T.RUN_EVENT_TYPE_MESSAGE_COMPLETED)[0].final_message == "Echo: hi"
    assert not events[-1].HasField("structured")


async def test_echo_repaired_once(make_mesh):
    # The first answer ("hi") misses the pattern; echo's second is made from the repair message,
    # which starts with "Your answer": the retry is what makes the answer match.
    mesh = await make_mesh()
    schema = {"type": "object", "properties": {"x": {"type": "string", "pattern": "^Your answer"}}}
    session = await mesh.session(response_format=_format(schema))
    events = await mesh.send(session.id, "hi")
    assert events[-1].type == T.RUN_EVENT_TYPE_RUN_COMPLETED
    assert len(_of(events, T.RUN_EVENT_TYPE_MESSAGE_COMPLETED)) == 2
    assert _structured(events[-1])["x"].startswith(
        "Your answer did not match the required JSON schema: /x: 'hi' does not match '^Your answer'."
    )


async def test_echo_failing_twice_fails_the_run(make_mesh):
    mesh = await make_mesh()
    schema = {"type": "object", "properties": {"x": {"type": "string", "maxLength": 1}}}
    session = await mesh.session(response_format=_format(schema))
    events = await mesh.send(session.id, "hi")
    last = events[-1]
    assert last.type == T.RUN_EVENT_TYPE_RUN_FAILED
    assert last.error.code == "FAILED_PRECONDITION"
    assert last.error.message.startswith("answer does not match the response schema: /x: ")
    assert not last.final_message and not last.HasField("structured")
    run = (await mesh.stub.GetRun(pb.GetRunRequest(run_id=last.run_id), metadata=mesh.md())).run
    assert run.state == pb.RUN_STATE_FAILED and run.error.code == "FAILED_PRECONDITION"


async def test_openai_gets_response_format_and_is_repaired_once(make_mesh, sse):
    server, url = sse
    mesh = await make_mesh(providers=_providers(url))
    session = await mesh.session(model="openai:json-repair", response_format=_format(X_STRING, "reply"))
    events = await mesh.send(session.id, "fix x")
    assert events[-1].type == T.RUN_EVENT_TYPE_RUN_COMPLETED
    assert _structured(events[-1]) == {"x": "fixed"}
    first, second = _of(events, T.RUN_EVENT_TYPE_MESSAGE_COMPLETED)
    assert first.final_message == "Sure! x is fixed." and not first.HasField("structured")
    assert _structured(second) == {"x": "fixed"}
    assert len(server.requests) == 2
    for body in server.requests:
        assert body["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "reply", "schema": X_STRING, "strict": True},
        }
    repair = server.requests[1]["messages"][-1]
    assert repair["role"] == "user"
    assert repair["content"].startswith(
        "Your answer did not match the required JSON schema: /: not valid JSON"
    )
    assert repair["content"].endswith("Answer again with JSON only.")
    # Both answers are stored (and metered): the history says why a second one follows.
    assert [m.content for m in assistant_messages(mesh.conversation)] == [
        "Sure! x is fixed.",
        '{"x": "fixed"}',
    ]


async def test_openai_always_invalid_fails_after_one_retry(make_mesh, sse):
    server, url = sse
    mesh = await make_mesh(providers=_providers(url))
    session = await mesh.session(model="openai:json-bad", response_format=_format(X_STRING))
    events = await mesh.send(session.id, "x please")
    assert events[-1].type == T.RUN_EVENT_TYPE_RUN_FAILED
    assert events[-1].error.code == "FAILED_PRECONDITION"
    assert (
        events[-1].error.message == "answer does not match the response schema: /x: 5 is not of type 'string'"
    )
    assert len(server.requests) == 2
    assert server.requests[0]["response_format"]["json_schema"]["name"] == "answer"


async def test_text_agents_send_no_response_format(make_mesh, sse):
    server, url = sse
    mesh = await make_mesh(providers=_providers(url))
    session = await mesh.session(model="openai:ok")
    await mesh.send(session.id, "hi")
    assert "response_format" not in server.requests[0]


@pytest.mark.parametrize(
    ("fmt", "field"),
    [
        (
            _format({"type": "object", "properties": {"x": {"type": "strin"}}}),
            "response_format.schema/properties/x/type",
        ),
        (apb.ResponseFormat(type=apb.RESPONSE_FORMAT_TYPE_JSON_SCHEMA), "response_format.schema"),
        (_format(X_STRING, "has space"), "response_format.name"),
        (apb.ResponseFormat(type=9), "response_format.type"),
    ],
)
async def test_a_bad_message_format_is_invalid_argument_and_admits_nothing(make_mesh, fmt, field):
    mesh = await make_mesh()
    session = await mesh.session()
    err = errors.from_rpc_error(
        await expect_status(
            mesh.send(session.id, "hi", response_format=fmt), grpc.StatusCode.INVALID_ARGUMENT
        )
    )
    assert [v.field for v in err.violations] == [field]
    runs = await mesh.stub.ListRuns(pb.ListRunsRequest(session_id=session.id), metadata=mesh.md())
    assert list(runs.runs) == []
