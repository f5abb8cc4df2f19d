"""Schema migrations: each service keeps Alembic revisions in services/<service>/migrations/ and
its own version table; `agentmesh migrate` and the embedded start-up run them."""

from __future__ import annotations

import pathlib

from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import AsyncEngine

SERVICES_DIR = pathlib.Path(__file__).resolve().parent.parent


def _config(service: str) -> Config | None:
    versions = SERVICES_DIR / service / "migrations"
    if not versions.is_dir():
        return None
    cfg = Config()
    cfg.set_main_option("script_location", str(pathlib.Path(__file__).parent / "alembic"))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", str(versions))
    cfg.set_main_option("version_table", f"alembic_version_{service}")
    return cfg


async def upgrade(engine: AsyncEngine, services: list[str]) -> list[str]:
    """Upgrades each named service to head; returns the services that have migrations."""
    migrated = []
    for service in services:
        cfg = _config(service)
        if cfg is None:
            continue

        def run(connection, cfg: Config = cfg) -> None:  # type: ignore[no-untyped-def]
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")

        async with engine.begin() as conn:
            await conn.run_sync(run)
        migrated.append(service)
    return migrated
