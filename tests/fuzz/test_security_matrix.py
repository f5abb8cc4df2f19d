"""Every RPC (found through the descriptors) x {no token, an expired token, another tenant's token,
a member's token}, each with its expected code, on the in-process mesh.

Requests are filled from the descriptors with the ids of tenant A's real resources (an agent, a
template, a session, a conversation with messages, a run, a user): a field `<resource>_id`, or the
`id` of a nested `<resource>` message, gets A's id. Expectations:
- no token: UNAUTHENTICATED, except the public methods (read from the services' registrations);
- an expired token (signed by identity's own key): UNAUTHENTICATED, public methods included;
- tenant B's owner with A's ids: NOT_FOUND (never PERMISSION_DENIED); where an id is only a filter
  or a reference (CROSS_TENANT_FILTERS), success is allowed but must carry none of A's data;
- A's member: PERMISSION_DENIED on the admin/owner-only RPCs (ADMIN_ONLY), anything but
  PERMISSION_DENIED on the others;
- a token with the platform operator's role, signed by identity's key (identity never issues one:
  the operator works through `agentmesh admin`): UNAUTHENTICATED, public methods included.
Never INTERNAL or UNKNOWN; a rejected call changes nothing stored.

Then the escalations a tenant might try: its tier (gRPC and HTTP), roles it may not hold, and mass
assignment (fields outside the mask, output-only fields such as ids, versions, times and tenant ids
in a request), each refused or ignored, never applied.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from tests.fuzz.descriptors import Outcome, Rpc, all_rpcs, call
from tests.fuzz.stack import Snapshots, Stack, World, changed, make_world
from tests.helpers import bearer

RPCS = all_rpcs()

# Roles cannot be read from the descriptors: each RPC is classified here, and
# test_every_rpc_is_classified fails until a new RPC is added to one of the two sets.
ADMIN_ONLY = {
    # identity: tenant administration (owner/admin)
    "IdentityService.CreateUser",
    "IdentityService.GetUser",
    "IdentityService.ListUsers",
    "IdentityService.UpdateUser",
    "IdentityService.DeleteUser",
    "IdentityService.GetTenant",
    "IdentityService.UpdateTenant",
    # agents: every write (owner/admin)
    "AgentService.CreateAgent",
    "AgentService.UpdateAgent",
    "AgentService.DeleteAgent",
    "AgentService.ActivateAgent",
    "AgentService.DeactivateAgent",
    "AgentService.RollbackAgent",
    "AgentService.CreateTemplate",
    "AgentService.DeleteTemplate",
    # conversation: the tenant's retention policy (owner/admin)
    "ConversationService.GetRetentionPolicy",
    "ConversationService.UpdateRetentionPolicy",
    # orchestration: the tenant's tool signing secret (owner/admin)
    "OrchestrationService.RotateToolSigningSecret",
}
MEMBER_ALLOWED = {
    "IdentityService.SignUp",
    "IdentityService.Login",
    "IdentityService.RefreshToken",
    "IdentityService.Logout",
    "IdentityService.GetJwks",
    "IdentityService.WhoAmI",
    "IdentityService.ChangePassword",
    "IdentityService.IssueServiceToken",
    "AgentService.GetAgent",
    "AgentService.ListAgents",
    "AgentService.ListAgentVersions",
    "AgentService.GetAgentVersion",
    "AgentService.DiffAgentVersions",
    "AgentService.ValidateAgentConfig",
    "AgentService.ListTemplates",
    "AgentService.GetTemplate",
    "AgentService.WatchAgents",
    # conversation and orchestration: members work on their own conversations, sessions and runs
    # (another user's are NOT_FOUND to them, like another tenant's).
    "ConversationService.CreateConversation",
    "ConversationService.GetConversation",
    "ConversationService.ListConversations",
    "ConversationService.UpdateConversation",
    "ConversationService.CloseConversation",
    "ConversationService.DeleteConversation",
    "ConversationService.AppendMessage",
    "ConversationService.ListMessages",
    "ConversationService.GetMessage",
    "ConversationService.EditMessage",
    "ConversationService.SwitchBranch",
    "ConversationService.GetContext",
    "ConversationService.SearchConversations",
    "ConversationService.GetTenantStats",
    "ConversationService.GetUsage",
    "ConversationService.CheckQuota",
    "OrchestrationService.StartSession",
    "OrchestrationService.EndSession",
    "OrchestrationService.UpdateSession",
    "OrchestrationService.DeleteSession",
    "OrchestrationService.GetSession",
    "OrchestrationService.ListSessions",
    "OrchestrationService.SendMessage",
    "OrchestrationService.EditMessage",
    "OrchestrationService.RegenerateAnswer",
    "OrchestrationService.SwitchBranch",
    "OrchestrationService.Chat",
    "OrchestrationService.GetRun",
    "OrchestrationService.ListRuns",
    "OrchestrationService.CancelRun",
    "OrchestrationService.JoinRun",
    # a waiting run is answered by whoever may see it (the session's user, an owner or admin)
    "OrchestrationService.SubmitToolOutputs",
    "OrchestrationService.DecideToolCalls",
}
# RPCs where A's id is only a filter (List*/Search*) or a reference the service does not own
# (conversation records an agent id without owning agents): B may succeed, seeing nothing of A.
CROSS_TENANT_FILTERS = {
    "ConversationService.CreateConversation",
    "ConversationService.ListConversations",
    "ConversationService.SearchConversations",
    "OrchestrationService.ListSessions",
    # usage filters by user/agent: another tenant's ids select nothing of A's
    "ConversationService.GetUsage",
}

ROWS = ("no_token", "expired", "other_tenant", "member", "operator")
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNIMPLEMENTED}
# Nested resource messages whose `id` names the resource (UpdateAgent's agent, UpdateUser's user).
INT_TYPES = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64}
TEXT_FIELDS = {"text", "content", "query", "title", "display_name"}


def _wkt(desc: Descriptor) -> bool:
    return desc.full_name.startswith("google.")


def fill(
    desc: Descriptor, ids: dict[str, str], resource: str = "", depth: int = 0, update: bool = False
) -> Any:
    """A request of type `desc` naming A's resources, otherwise well-formed enough to reach the
    lookup: ids by field name (a nested resource's own id only in an Update*), 1 for integers
    (versions, budgets, page sizes), a little text, the first value of each enum, one member of
    each oneof, and an update_mask of display_name (title where the resource has that) for Update*
    requests."""
    msg = message_factory.GetMessageClass(desc)()
    oneofs: set[str] = set()
    for f in desc.fields:
        if f.containing_oneof is not None:
            if f.containing_oneof.name in oneofs:
                continue
        if f.is_repeated:
            continue
        if f.message_type is not None:
            # Usage is accepted on assistant messages only, and the request is not one: filled, it
            # would be refused as bad input before the lookup the matrix is about.
            if _wkt(f.message_type) or depth >= 2 or f.name == "usage":
                continue
            update = "update_mask" in desc.fields_by_name
            getattr(msg, f.name).CopyFrom(fill(f.message_type, ids, f.name, depth + 1, update))
        elif f.type == FieldDescriptor.TYPE_STRING:
            if f.name.endswith("_id") and f.name[:-3] in ids:
                setattr(msg, f.name, ids[f.name[:-3]])
            elif f.name == "id" and update and resource in ids:
                setattr(msg, f.name, ids[resource])
            elif f.name in TEXT_FIELDS:
                setattr(msg, f.name, "renamed")
            else:
                continue
        elif f.type == FieldDescriptor.TYPE_ENUM:
            setattr(msg, f.name, 1)
        elif f.type in INT_TYPES:
            setattr(msg, f.name, 1)
        else:
            continue
        if f.containing_oneof is not None:
            oneofs.add(f.containing_oneof.name)
    if "update_mask" in desc.fields_by_name:
        # The resource's name field: display_name, or title for sessions and conversations.
        names = {n for f in desc.fields if f.message_type is not None for n in f.message_type.fields_by_name}
        msg.update_mask.paths.append(
            "display_name" if "display_name" in names or "title" not in names else "title"
        )
    return msg


def a_ids(request: Any, ids: dict[str, str]) -> set[str]:
    text = str(request)
    return {v for v in ids.values() if v in text}


@dataclasses.dataclass(frozen=True)
class Case:
    rpc: Rpc
    row: str

    @property
    def id(self) -> str:
        return f"{self.rpc.short}-{self.row}"


def cases(public: frozenset[str]) -> Iterator[Case]:
    for rpc in RPCS:
        for row in ROWS:
            yield Case(rpc, row)


CASES = list(cases(frozenset()))


@pytest.fixture(scope="module")
def worlds(stack: Stack) -> tuple[World, World]:
    return make_world(stack, "tenant-a"), make_world(stack, "tenant-b")


def test_every_rpc_is_classified() -> None:
    names = {r.short for r in RPCS}
    assert not ADMIN_ONLY & MEMBER_ALLOWED
    assert names - (ADMIN_ONLY | MEMBER_ALLOWED) == set(), (
        "classify the new RPCs in ADMIN_ONLY or MEMBER_ALLOWED"
    )
    assert (ADMIN_ONLY | MEMBER_ALLOWED) - names == set(), "the role tables name RPCs that no longer exist"
    assert CROSS_TENANT_FILTERS <= names


def test_public_methods_come_from_the_registrations(stack: Stack) -> None:
    public = stack.public_methods
    assert "/agentmesh.identity.v1.IdentityService/SignUp" in public
    assert "/agentmesh.identity.v1.IdentityService/WhoAmI" not in public
    assert public <= {r.path for r in RPCS}


def _token(case: Case, stack: Stack, a: World, b: World) -> str | None:
    if case.row == "no_token":
        return None
    if case.row == "expired":
        return stack.expired_token(subject=a.owner.user_id, tenant=a.tenant_id, roles=["owner"])
    # Fresh tokens each case: an earlier case (Logout) may have denied the previous one.
    if case.row == "other_tenant":
        return b.refreshed(b.owner)
    if case.row == "operator":
        return stack.operator_token()
    return a.refreshed(a.member)


def _leaks(outcome: Outcome, a: World) -> bool:
    """Every text tenant A stored (names, titles, prompts, message contents, run inputs) carries its
    marker; ids alone prove nothing, since B may have recorded A's ids itself (a filter, a reference)."""
    return any(a.marker in str(r) for r in outcome.responses)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matrix(case: Case, stack: Stack, worlds: tuple[World, World], snapshots: Snapshots) -> None:
    a, b = worlds
    rpc = case.rpc
    if case.row == "no_token" and rpc.path in stack.public_methods:
        pytest.skip("public method: callable without a token")
    request = fill(rpc.descriptor.input_type, a.ids)
    token = _token(case, stack, a, b)
    metadata = bearer(token) if token else ()

    snapshots.settle()
    before = snapshots.take()
    outcome = call(stack.channel, rpc, [request], metadata=metadata, stream_timeout=0.5, max_messages=5)
    code = _effective_code(outcome)
    where = f"{case.id} answered {code}: {outcome.details}"

    assert code not in FORBIDDEN, where
    if case.row in ("no_token", "expired", "operator"):
        assert code == grpc.StatusCode.UNAUTHENTICATED, where
    elif case.row == "other_tenant":
        assert code != grpc.StatusCode.PERMISSION_DENIED, where
        carried = a_ids(request, a.ids)
        if carried and rpc.short not in CROSS_TENANT_FILTERS:
            assert code == grpc.StatusCode.NOT_FOUND, where
        assert not _leaks(outcome, a), f"{case.id} showed tenant A's data: {outcome.responses}"
    elif rpc.short in ADMIN_ONLY:
        assert code == grpc.StatusCode.PERMISSION_DENIED, where
    else:
        assert code != grpc.StatusCode.PERMISSION_DENIED, where

    if code not in (grpc.StatusCode.OK, None) and not outcome.responses:
        after = snapshots.take()
        assert not changed(before, after), f"{where}; yet it changed {changed(before, after)}"


def _effective_code(outcome: Outcome) -> grpc.StatusCode | None:
    """The call's status, or the first error a stream carried in a message (Chat keeps its stream
    open and answers a rejected request with a google.rpc.Status `status`)."""
    for reply in outcome.responses:
        if "status" in reply.DESCRIPTOR.fields_by_name and reply.HasField("status"):
            for code in grpc.StatusCode:
                if code.value[0] == reply.status.code:
                    return code
    return outcome.code


# -- escalation --------------------------------------------------------------------------------------

OUTPUT_ONLY = {"id", "tenant_id", "version", "create_time", "update_time", "etag", "name"}
PLANTED_ID = "00000000-0000-0000-0000-00000000beef"


def _denied(stack: Stack, method: str, request: Any, token: str) -> grpc.RpcError:
    stub = stack.stubs().identity
    with pytest.raises(grpc.RpcError) as caught:
        getattr(stub, method)(request, metadata=bearer(token), timeout=10)
    return caught.value


def test_tier_escalation_by_any_route(
    stack: Stack, worlds: tuple[World, World], snapshots: Snapshots
) -> None:
    """Nobody in a tenant sets a tier: not its owner, not its member, not another tenant; not by
    gRPC, not through the gateway's PATCH /v1/tenant; not by slipping it past the mask."""
    import httpx

    from agentmesh.identity.v1 import identity_service_pb2 as id_pb

    a, b = worlds
    tokens = (a.refreshed(a.owner), a.refreshed(a.member), b.refreshed(b.owner))
    snapshots.settle()
    before = snapshots.take()
    for token in tokens:
        for paths in (["tier"], ["display_name", "tier"]):
            request = id_pb.UpdateTenantRequest(
                tenant=id_pb.Tenant(tier=id_pb.TIER_FREE, display_name="cheap"), update_mask={"paths": paths}
            )
            assert _denied(stack, "UpdateTenant", request, token).code() == grpc.StatusCode.PERMISSION_DENIED
        reply = httpx.patch(
            f"http://127.0.0.1:{stack.http_port}/v1/tenant?updateMask=tier",
            json={"tier": "TIER_FREE"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert reply.status_code == 403, reply.text
    assert not changed(before, snapshots.take())
    # `*` is the tenant's own fields: a tier in the body is ignored (display_name is the change).
    owner = a.refreshed(a.owner)
    tenant = (
        stack.stubs()
        .identity.UpdateTenant(
            id_pb.UpdateTenantRequest(
                tenant=id_pb.Tenant(tier=id_pb.TIER_FREE, display_name=f"{a.marker} renamed"),
                update_mask={"paths": ["*"]},
            ),
            metadata=bearer(owner),
            timeout=10,
        )
        .tenant
    )
    assert tenant.tier == id_pb.TIER_ENTERPRISE


def test_role_escalation(stack: Stack, worlds: tuple[World, World], snapshots: Snapshots) -> None:
    """A member granting itself owner; an owner granting operator or service, at creation or later."""
    from agentmesh.identity.v1 import identity_service_pb2 as id_pb

    a, _ = worlds
    member, owner = a.refreshed(a.member), a.refreshed(a.owner)
    snapshots.settle()
    before = snapshots.take()
    attempts = [
        (
            member,
            "UpdateUser",
            id_pb.UpdateUserRequest(
                user=id_pb.User(id=a.member.user_id, roles=[id_pb.ROLE_OWNER]),
                update_mask={"paths": ["roles"]},
            ),
        ),
        (
            member,
            "CreateUser",
            id_pb.CreateUserRequest(
                username="upstart", password="fuzz-long-password", roles=[id_pb.ROLE_OWNER]
            ),
        ),
    ]
    for role in (id_pb.ROLE_OPERATOR, id_pb.ROLE_SERVICE):
        attempts += [
            (
                owner,
                "CreateUser",
                id_pb.CreateUserRequest(username="upstart", password="fuzz-long-password", roles=[role]),
            ),
            (
                owner,
                "UpdateUser",
                id_pb.UpdateUserRequest(
                    user=id_pb.User(id=a.owner.user_id, roles=[id_pb.ROLE_OWNER, role]),
                    update_mask={"paths": ["roles"]},
                ),
            ),
            (
                owner,
                "UpdateUser",
                id_pb.UpdateUserRequest(
                    user=id_pb.User(id=a.member.user_id, roles=[role]), update_mask={"paths": ["*"]}
                ),
            ),
        ]
    for token, method, request in attempts:
        error = _denied(stack, method, request, token)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (method, request, error)
    assert not changed(before, snapshots.take())


def _plant(msg: Any) -> list[str]:
    """Sets the output-only fields a resource message has to values the server must not take;
    returns their names."""
    planted = []
    for f in msg.DESCRIPTOR.fields:
        if f.name not in OUTPUT_ONLY or f.is_repeated:
            continue
        if f.message_type is not None and f.message_type.full_name == "google.protobuf.Timestamp":
            getattr(msg, f.name).FromSeconds(86400)
        elif f.type == FieldDescriptor.TYPE_STRING and f.name != "id":
            setattr(msg, f.name, PLANTED_ID if f.name == "tenant_id" else "planted")
        elif f.type in INT_TYPES:
            setattr(msg, f.name, 999)
        else:
            continue
        planted.append(f.name)
    return planted


def _applied(resource: Any, planted: list[str]) -> list[str]:
    found = []
    for name in planted:
        value = getattr(resource, name)
        if name.endswith("_time") and value.seconds == 86400:
            found.append(name)
        elif name == "tenant_id" and value == PLANTED_ID:
            found.append(name)
        elif name in ("version",) and value == 999:
            found.append(name)
        elif name in ("name", "etag") and value == "planted":
            found.append(name)
    return found


UPDATES = [
    r
    for r in RPCS
    if r.short.split(".")[1].startswith("Update") and "update_mask" in r.descriptor.input_type.fields_by_name
]


@pytest.mark.parametrize("rpc", UPDATES, ids=lambda r: r.short)
def test_mass_assignment_on_update(rpc: Rpc, stack: Stack, worlds: tuple[World, World]) -> None:
    """An Update with mask display_name and output-only fields set in the body: those are ignored;
    the same fields named in the mask are refused (INVALID_ARGUMENT), never applied."""
    a, _ = worlds
    token = a.refreshed(a.owner)
    request = fill(rpc.descriptor.input_type, a.ids)
    resource_field = next(
        f.name
        for f in rpc.descriptor.input_type.fields
        if f.message_type is not None and not _wkt(f.message_type)
    )
    resource = getattr(request, resource_field)
    planted = [p for p in _plant(resource) if p != "etag"]
    if "etag" in resource.DESCRIPTOR.fields_by_name:
        resource.ClearField("etag")
    assert planted, f"{rpc.short}: no output-only field to plant"
    outcome = call(stack.channel, rpc, [request], metadata=bearer(token))
    assert outcome.code == grpc.StatusCode.OK, f"{rpc.short}: {outcome.code} {outcome.details}"
    reply = getattr(outcome.responses[0], resource_field)
    assert not _applied(reply, planted), f"{rpc.short} applied {_applied(reply, planted)}: {reply}"
    for path in planted:
        masked = fill(rpc.descriptor.input_type, a.ids)
        _plant(getattr(masked, resource_field))
        if "etag" in getattr(masked, resource_field).DESCRIPTOR.fields_by_name:
            getattr(masked, resource_field).ClearField("etag")
        del masked.update_mask.paths[:]
        masked.update_mask.paths.append(path)
        refused = call(stack.channel, rpc, [masked], metadata=bearer(token))
        code = refused.code
        if code == grpc.StatusCode.OK:
            again = getattr(refused.responses[0], resource_field)
            assert not _applied(again, [path]), f"{rpc.short} applied {path} from the mask: {again}"
        else:
            assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED), (
                f"{rpc.short} with mask {path}: {code} {refused.details}"
            )


def _resource_field(rpc: Rpc) -> str | None:
    """The request's resource message field (not a map, list or well-known type), if it has one."""
    for f in rpc.descriptor.input_type.fields:
        if f.message_type is not None and not f.is_repeated and not _wkt(f.message_type):
            return str(f.name)
    return None


CREATES = [r for r in RPCS if r.short.split(".")[1].startswith("Create") and _resource_field(r)]


@pytest.mark.parametrize("rpc", CREATES, ids=lambda r: r.short)
def test_mass_assignment_on_create(rpc: Rpc, stack: Stack, worlds: tuple[World, World]) -> None:
    """A Create whose resource carries output-only values (its id, tenant, version, times): the
    server assigns its own, never the planted ones."""
    a, _ = worlds
    token = a.refreshed(a.owner)
    request = fill(rpc.descriptor.input_type, a.ids)
    resource_field = _resource_field(rpc)
    assert resource_field is not None
    resource = getattr(request, resource_field)
    if "config" in resource.DESCRIPTOR.fields_by_name and not resource.config.model:
        resource.config.model = "echo:default"  # the generator's config is not always a valid one
    planted = _plant(resource)
    if "id" in resource.DESCRIPTOR.fields_by_name:
        resource.id = PLANTED_ID
        planted.append("id")
    assert planted, f"{rpc.short}: no output-only field to plant"
    outcome = call(stack.channel, rpc, [request], metadata=bearer(token))
    assert outcome.code == grpc.StatusCode.OK, f"{rpc.short}: {outcome.code} {outcome.details}"
    reply = getattr(outcome.responses[0], resource_field)
    applied = _applied(reply, planted)
    if "id" in planted and reply.id == PLANTED_ID:
        applied.append("id")
    assert not applied, f"{rpc.short} applied {applied}: {reply}"
