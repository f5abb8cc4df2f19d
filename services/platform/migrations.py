"""Schema migrations: each service keeps Alembic revisions in services/<service>/migrations/ and
its own version table; `agentmesh migrate` and the embedded start-up run them."""

from __future__ import annotations

import pathlib

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

SERVICES_DIR = pathlib.Path(__file__).resolve().parent.parent


def _config(service: str) -> Config | None:
    versions = SERVICES_DIR / service / "migrations"
    if not versions.is_dir():
        return None
    cfg = Config()
    cfg.set_main_option("script_location", str(pathlib.Path(__file__).parent / "alembic"))
    # Without path_separator Alembic warns (and splits paths on spaces); one directory, so "os".
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

        def run(connection: Connection, cfg: Config = cfg) -> None:
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")

        async with engine.begin() as conn:
            await conn.run_sync(run)
        migrated.append(service)
    return migrated


def _behind(script: ScriptDirectory, current: tuple[str, ...]) -> bool:
    """Whether the database's revisions miss a migration this code has. A revision this code does
    not know is newer than the code (a rolling deploy migrated first): not behind."""
    if not current:
        return True
    for revision in current:
        try:
            script.get_revision(revision)
        except CommandError:
            return False
    return set(current) != set(script.get_heads())


async def behind(engine: AsyncEngine, services: list[str]) -> list[str]:
    """The services whose schema in the database is older than their newest migration."""
    found = []
    for service in services:
        cfg = _config(service)
        if cfg is None:
            continue

        def current(connection: Connection, table: str = f"alembic_version_{service}") -> tuple[str, ...]:
            context = MigrationContext.configure(connection, opts={"version_table": table})
            return tuple(context.get_current_heads())

        async with engine.connect() as conn:
            revisions = await conn.run_sync(current)
        if _behind(ScriptDirectory.from_config(cfg), revisions):
            found.append(service)
    return found
