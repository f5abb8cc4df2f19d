"""schemathesis against the gateway's /openapi.json, the gateway running in front of the real
services (the in-process mesh), with the bearer token of a real owner.

Checks: no 5xx (not_a_server_error) and every response conforming to the document's schema
(response_schema_conformance). Bounded: AGENTMESH_SCHEMATHESIS_EXAMPLES (default 10) per operation.
"""

from __future__ import annotations

import os
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from gateway import openapi, routes
from tests.fuzz.stack import Stack, World, make_world

EXAMPLES = int(os.environ.get("AGENTMESH_SCHEMATHESIS_EXAMPLES", "10"))
# WatchAgents is an endless stream by design (SSE until the client leaves): a generated call would
# only ever end at our timeout. The other streams (SendMessage, JoinRun) end and are tested.
ENDLESS = {"AgentService_WatchAgents"}


@pytest.fixture(scope="session")
def owner(stack: Stack) -> World:
    return make_world(stack, "schemathesis")


# The document the gateway serves at /openapi.json, built by the same code from the same routes
# (loaded at collection, before any server runs; test_served_document_is_this_one checks they match).
# Its path templates name plain lowerCamelCase variables, which schemathesis fills as they are.
schema = schemathesis.openapi.from_dict(openapi.document(routes.discover())).exclude(
    operation_id=sorted(ENDLESS)
)


def test_served_document_is_this_one(stack: Stack) -> None:
    served = httpx.get(f"http://127.0.0.1:{stack.http_port}/openapi.json", timeout=10).json()
    assert served == openapi.document(routes.discover())


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_gateway(case: Any, stack: Stack, owner: World) -> None:
    # A fresh token each case: a generated POST /v1/identity:logout denies the previous one.
    token = owner.refreshed(owner.owner)
    case.call_and_validate(
        base_url=f"http://127.0.0.1:{stack.http_port}",
        headers={"Authorization": f"Bearer {token}"},
        checks=[not_a_server_error, response_schema_conformance],
        timeout=10,
    )
