"""The service layer alone, with an in-memory store and event sink (no gRPC, no database)."""

from __future__ import annotations

import asyncio

import pytest

from services.agents.models import ChangeType
from services.agents.service import AgentService
from services.platform import errors
from services.platform.auth import Principal
from services.platform.pagination import PageTokens
from tests.fakes.agents import FakeEvents, FakeStore


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


async def test_watch_gives_the_tenant_its_own_changes_only_and_a_service_every_tenant(parts):
    service, _, _ = parts
    service_identity = Principal(user_id="orch", tenant_id="*", roles=frozenset({"service"}), tier="pro")
    ready: list[str] = []

    async def on_ready() -> None:
        ready.append("t1")

    mine = service.watch(owner(), all_tenants=False, on_ready=on_ready)
    every = service.watch(service_identity, all_tenants=True)
    # Subscriptions hold only once iteration starts: start both before anything changes.
    first_mine, first_every = asyncio.ensure_future(anext(mine)), asyncio.ensure_future(anext(every))
    await asyncio.sleep(0)
    assert ready == ["t1"]
    other = await _create(service, owner(tenant="t2"))
    own = await _create(service)
    assert (await first_mine).agent_id == own.id
    assert (await first_every).agent_id == other.id
    assert (await anext(every)).agent_id == own.id
    await mine.aclose()
    await every.aclose()


async def test_templates_are_the_tenants_own_and_built_ins_stay(parts):
    service, _, _ = parts
    made = await service.create_template(
        owner(), display_name="T", description="", config={"model": "echo:default"}, request_id="r-1"
    )
    again = await service.create_template(
        owner(), display_name="T2", description="", config={"model": "echo:default"}, request_id="r-1"
    )
    assert again.id == made.id  # the same request id replays, it does not create a second one
    with pytest.raises(errors.NotFound):
        await service.delete_template(owner(tenant="t2"), made.id)
    with pytest.raises(errors.FailedPrecondition):
        await service.delete_template(owner(), "builtin-assistant")
    await service.delete_template(owner(), made.id)
    with pytest.raises(errors.NotFound):
        await service.get_template(owner(), made.id)
