"""The service layer alone, with an in-memory store and event sink (no gRPC, no database)."""

from __future__ import annotations

import dataclasses

import pytest

from services.agents.models import Agent, AgentEvent, AgentVersion, ChangeType, Template
from services.agents.service import AgentService
from services.agents.store import LimitReached, VersionConflict
from services.platform import errors
from services.platform.auth import Principal
from services.platform.pagination import PageTokens


class FakeStore:
    def __init__(self):
        self.agents: dict[str, Agent] = {}
        self.deleted: set[str] = set()
        self.versions: dict[tuple[str, int], AgentVersion] = {}
        self.templates: dict[str, Template] = {}
        self.requests: dict[tuple[str, str, str], str] = {}
        self.counts: dict[str, int] = {}
        # Simulates another writer moving the agent between read and write.
        self.interfere = 0

    async def get_agent(self, tenant_id, agent_id):
        a = self.agents.get(agent_id)
        if a is None or agent_id in self.deleted or (tenant_id is not None and a.tenant_id != tenant_id):
            return None
        return a

    async def agent_exists(self, tenant_id, agent_id, *, include_deleted):
        a = self.agents.get(agent_id)
        return bool(
            a and (tenant_id in (None, a.tenant_id)) and (include_deleted or agent_id not in self.deleted)
        )

    async def list_agents(self, tenant_id, *, state, after, limit):
        rows = sorted(
            (a for a in self.agents.values() if a.tenant_id == tenant_id and a.id not in self.deleted),
            key=lambda a: (a.create_time_us, a.id),
        )
        rows = [
            a
            for a in rows
            if (state is None or a.state == state) and (after is None or (a.create_time_us, a.id) > after)
        ]
        return rows[:limit]

    async def count_agents(self, tenant_id):
        return self.counts.get(tenant_id, 0)

    async def find_request(self, tenant_id, kind, request_id):
        return self.requests.get((tenant_id, kind, request_id))

    async def create_agent(self, agent, version, *, max_agents, request_id=""):
        if self.counts.get(agent.tenant_id, 0) >= max_agents:
            raise LimitReached
        self.counts[agent.tenant_id] = self.counts.get(agent.tenant_id, 0) + 1
        if request_id:
            self.requests[(agent.tenant_id, "agent", request_id)] = agent.id
        self.agents[agent.id] = agent
        self.versions[(agent.id, version.version)] = version

    async def write_version(self, agent, version, *, expected_version, delete=False):
        if self.interfere:
            self.interfere -= 1
            current = self.agents[agent.id]
            self.agents[agent.id] = dataclasses.replace(current, version=current.version + 1)
        if self.agents[agent.id].version != expected_version:
            raise VersionConflict
        self.agents[agent.id] = agent
        self.versions[(agent.id, version.version)] = version
        if delete:
            self.deleted.add(agent.id)
            self.counts[agent.tenant_id] -= 1

    async def get_version(self, tenant_id, agent_id, version):
        v = self.versions.get((agent_id, version))
        return v if v and tenant_id in (None, v.tenant_id) else None

    async def list_versions(self, tenant_id, agent_id, *, before, limit):
        rows = sorted(
            (
                v
                for (a, n), v in self.versions.items()
                if a == agent_id and v.tenant_id == tenant_id and (before is None or n < before)
            ),
            key=lambda v: -v.version,
        )
        return rows[:limit]

    async def get_template(self, tenant_id, template_id):
        t = self.templates.get(template_id)
        return t if t and t.tenant_id == tenant_id else None

    async def list_templates(self, tenant_id, *, after, limit):
        return [t for t in self.templates.values() if t.tenant_id == tenant_id][:limit]

    async def create_template(self, template, *, request_id=""):
        self.templates[template.id] = template

    async def delete_template(self, tenant_id, template_id):
        return self.templates.pop(template_id, None) is not None


class FakeEvents:
    def __init__(self):
        self.published: list[AgentEvent] = []

    async def publish(self, event):
        self.published.append(event)

    def subscribe(self, tenant_id):  # pragma: no cover - not used here
        raise NotImplementedError


def owner(tier="pro", tenant="t1"):
    return Principal(user_id="u1", tenant_id=tenant, roles=frozenset({"owner"}), tier=tier)


@pytest.fixture
def parts():
    store, events = FakeStore(), FakeEvents()
    ticks = iter(range(1, 10_000))
    service = AgentService(
        store=store, events=events, page_tokens=PageTokens(b"k"), clock=lambda: float(next(ticks))
    )
    return service, store, events


async def _create(service, p=None, **kw):
    return await service.create_agent(
        p or owner(),
        display_name=kw.pop("display_name", "A"),
        description="",
        state=None,
        config=kw.pop("config", {"model": "echo:default"}),
        template_id=kw.pop("template_id", ""),
        request_id=kw.pop("request_id", ""),
    )


async def test_create_records_a_version_and_publishes_after_it(parts):
    service, store, events = parts
    a = await _create(service)
    assert store.versions[(a.id, 1)].change_type == ChangeType.CREATED
    assert [e.change_type for e in events.published] == [ChangeType.CREATED]


async def test_rejected_create_stores_and_publishes_nothing(parts):
    service, store, events = parts
    with pytest.raises(errors.InvalidArgument):
        await _create(service, config={"model": "bad"})
    with pytest.raises(errors.FailedPrecondition):
        await _create(service, owner(tier="free"), config={"model": "openai:gpt-4o"})
    assert store.agents == {} and events.published == []


async def test_agent_limit_is_quota_exceeded(parts):
    service, _, _ = parts
    for _ in range(3):
        await _create(service, owner(tier="free"))
    with pytest.raises(errors.QuotaExceeded) as exc:
        await _create(service, owner(tier="free"))
    assert exc.value.violations[0].type == "max_agents"


async def test_etag_update_conflict_is_aborted_but_last_writer_retries(parts):
    service, store, _ = parts
    a = await _create(service)
    store.interfere = 1
    with pytest.raises(errors.Aborted):
        await service.update_agent(
            owner(), a.id, etag=a.etag, paths=["description"], patch={"description": "x"}
        )
    store.interfere = 1
    updated = await service.update_agent(
        owner(), a.id, etag="", paths=["description"], patch={"description": "y", "config": {}}
    )
    # Two simulated foreign writes moved it to v3; the retried write is v4.
    assert updated.description == "y" and updated.version == 4


@pytest.mark.parametrize("paths", [["state"], ["config.unknown"], ["id"], []])
async def test_bad_mask_paths(parts, paths):
    service, _, _ = parts
    a = await _create(service)
    with pytest.raises(errors.InvalidArgument):
        await service.update_agent(owner(), a.id, etag="", paths=paths, patch={})


async def test_star_mask_replaces_every_updatable_field(parts):
    service, _, _ = parts
    a = await _create(service, config={"model": "echo:default", "temperature": 1.0})
    patch = {"display_name": "B", "description": "d", "state": "", "config": {"model": "echo:other"}}
    b = await service.update_agent(owner(), a.id, etag=a.etag, paths=["*"], patch=patch)
    assert (b.display_name, b.description, b.config, b.state) == ("B", "d", {"model": "echo:other"}, "ACTIVE")


async def test_activate_checks_the_tier_of_the_caller(parts):
    service, _, _ = parts
    a = await _create(service, config={"model": "openai:gpt-4o"})
    await service.set_state(owner(), a.id, etag="", active=False)
    with pytest.raises(errors.FailedPrecondition) as exc:
        await service.set_state(owner(tier="free"), a.id, etag="", active=True)
    assert exc.value.violations[0].type == "allowed_models"


async def test_watch_all_tenants_needs_a_service_identity(parts):
    service, _, _ = parts
    with pytest.raises(errors.PermissionDenied):
        service.watch(owner(), all_tenants=True)
