"""The migration and the store on SQLite (the embedded default), through the service layer."""

from __future__ import annotations

import pytest

from services.agents.events import EventBus
from services.agents.service import AgentService
from services.agents.store import AgentStore
from services.platform import errors, migrations
from services.platform.auth import Principal
from services.platform.db import create_engine
from services.platform.pagination import PageTokens


async def test_sqlite_lifecycle(tmp_path):
    import fakeredis

    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'agents.db'}")
    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    try:
        assert await migrations.upgrade(engine, ["agents"]) == ["agents"]
        service = AgentService(
            store=AgentStore(engine=engine), events=EventBus(redis=redis), page_tokens=PageTokens(b"k")
        )
        p = Principal(user_id="u", tenant_id="t", roles=frozenset({"owner"}), tier="free")
        made = [
            await service.create_agent(
                p,
                display_name=f"a{i}",
                description="",
                state=None,
                config={"model": "echo:x"},
                template_id="",
                request_id="same" if i == 0 else "",
            )
            for i in range(3)
        ]
        with pytest.raises(errors.QuotaExceeded):
            await service.create_agent(
                p,
                display_name="x",
                description="",
                state=None,
                config={"model": "echo:x"},
                template_id="",
                request_id="",
            )
        page = await service.list_agents(p, page_size_=2, page_token="", state=None)
        rest = await service.list_agents(p, page_size_=2, page_token=page.next_page_token, state=None)
        assert [a.id for a in page.items + rest.items] == [a.id for a in made]
        updated = await service.update_agent(
            p, made[0].id, etag=made[0].etag, paths=["description"], patch={"description": "d", "config": {}}
        )
        with pytest.raises(errors.Aborted):
            await service.update_agent(
                p, made[0].id, etag=made[0].etag, paths=["description"], patch={"description": "e"}
            )
        await service.delete_agent(p, made[1].id, etag="")
        assert [
            v.version for v in (await service.list_versions(p, made[0].id, page_size_=0, page_token="")).items
        ] == [2, 1]
        assert updated.version == 2
        replay = await service.create_agent(
            p,
            display_name="again",
            description="",
            state=None,
            config={"model": "echo:x"},
            template_id="",
            request_id="same",
        )
        assert replay.id == made[0].id
    finally:
        await redis.aclose()
        await engine.dispose()
