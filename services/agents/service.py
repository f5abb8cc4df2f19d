"""The agents service's rules: tenancy, roles, tier limits, versioning, templates, change events.

Plain Python: takes a Principal and JSON-shaped content (see models.py), raises platform errors.
Every change writes a new immutable version in the same transaction as the change, then publishes
an event after the commit.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from services.agents import validation
from services.agents.models import (
    ACTIVE,
    CONFIG_FIELDS,
    INACTIVE,
    Agent,
    AgentEvent,
    AgentVersion,
    ChangeType,
    FieldDiff,
    Template,
    diff_content,
)
from services.agents.templates import BUILTIN_PREFIX, builtin_templates, find_builtin
from services.platform import errors, timestamps
from services.platform.auth import ROLE_ADMIN, ROLE_MEMBER, ROLE_OWNER, Principal
from services.platform.pagination import Page, PageTokens, keyset, paginate, position
from services.platform.settings import ToolSettings
from services.platform.tiers import limits_for
from services.platform.validation import require_id, require_request_id

UPDATABLE_PATHS = frozenset(
    {"display_name", "description", "config", *(f"config.{f}" for f in CONFIG_FIELDS)}
)
# AGENTMESH_TOOL_ALLOWED_HOSTS unset: plain http to no host.
_NO_TOOL_HOSTS = ToolSettings()
# An update with no etag retries this often when another writer moves the version under it.
_LAST_WRITER_ATTEMPTS = 5


class LimitReached(Exception):
    """Store.create_agent: the tenant already has its tier's maximum number of agents."""


class VersionConflict(Exception):
    """Store.write_version: the agent moved past the expected version (or was deleted) since it was read."""


class DuplicateRequest(Exception):
    """Store.create_agent/create_template: another create with the same request id committed first."""


class Store(Protocol):
    async def get_agent(self, tenant_id: str | None, agent_id: str) -> Agent | None: ...
    async def agent_exists(self, tenant_id: str | None, agent_id: str, *, include_deleted: bool) -> bool: ...
    async def list_agents(
        self, tenant_id: str, *, state: str | None, after: tuple[int, str] | None, limit: int
    ) -> list[Agent]: ...
    async def count_agents(self, tenant_id: str) -> int: ...
    async def find_request(self, tenant_id: str, kind: str, request_id: str) -> str | None: ...
    async def create_agent(
        self, agent: Agent, version: AgentVersion, *, max_agents: int, request_id: str = ""
    ) -> None: ...
    async def write_version(
        self, agent: Agent, version: AgentVersion, *, expected_version: int, delete: bool = False
    ) -> None: ...
    async def get_version(
        self, tenant_id: str | None, agent_id: str, version: int
    ) -> AgentVersion | None: ...
    async def list_versions(
        self, tenant_id: str, agent_id: str, *, before: int | None, limit: int
    ) -> list[AgentVersion]: ...
    async def get_template(self, tenant_id: str, template_id: str) -> Template | None: ...
    async def list_templates(
        self, tenant_id: str, *, after: tuple[int, str] | None, limit: int
    ) -> list[Template]: ...
    async def create_template(self, template: Template, *, request_id: str = "") -> None: ...
    async def delete_template(self, tenant_id: str, template_id: str) -> bool: ...


class Events(Protocol):
    async def publish(self, event: AgentEvent) -> None: ...
    def subscribe(
        self, tenant_id: str | None, *, on_ready: Callable[[], Awaitable[None]] | None = None
    ) -> AsyncIterator[AgentEvent]: ...


def _require_reader(p: Principal) -> None:
    if not p.is_service:
        p.require_any_role(ROLE_OWNER, ROLE_ADMIN, ROLE_MEMBER)


def _require_writer(p: Principal) -> None:
    if p.is_service:
        raise errors.PermissionDenied(
            "a service identity may read agents, never change them", reason="READ_ONLY"
        )
    p.require_admin()


def _check_etag(etag: str, agent: Agent) -> None:
    """An empty etag means "whatever is current" (last writer wins); a present one must match."""
    if etag and etag != agent.etag:
        raise errors.Aborted(
            f"etag {etag} is stale: the agent is at {agent.etag}; read it again and retry",
            reason="ETAG_MISMATCH",
            metadata={"current_etag": agent.etag},
        )


def _changed_paths(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [d.path for d in diff_content(old, new)]


class AgentService:
    def __init__(
        self,
        *,
        store: Store,
        events: Events,
        page_tokens: PageTokens,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        tool_hosts: ToolSettings = _NO_TOOL_HOSTS,
    ):
        self._store = store
        self._tool_hosts = tool_hosts
        self._events = events
        self._pages = page_tokens
        self._clock = clock
        self._new_id = new_id

    def _now_us(self) -> int:
        return timestamps.micros(self._clock)

    # -- reads --------------------------------------------------------------------------------

    async def get_agent(self, p: Principal, agent_id: str) -> Agent:
        _require_reader(p)
        require_id(agent_id, "agent_id")
        # A service identity reads any tenant's agent by id (orchestration, on the user's behalf).
        agent = await self._store.get_agent(None if p.is_service else p.tenant_id, agent_id)
        if agent is None:
            raise errors.NotFound(f"agent {agent_id!r} not found", reason="AGENT_NOT_FOUND")
        return agent

    async def list_agents(
        self, p: Principal, *, page_size_: int, page_token: str, state: str | None
    ) -> Page[Agent]:
        _require_reader(p)

        async def fetch(after: tuple[int, str] | None, limit: int) -> list[Agent]:
            return await self._store.list_agents(p.tenant_id, state=state, after=after, limit=limit)

        return await paginate(
            self._pages,
            ("agents.list", p.tenant_id, state or ""),
            page_size=page_size_,
            page_token=page_token,
            parse=keyset,
            fetch=fetch,
            cursor_of=lambda a: [a.create_time_us, a.id],
        )

    async def _versions_visible(self, p: Principal, agent_id: str) -> str | None:
        """The tenant scope for version reads; versions of a soft-deleted agent stay readable (audit)."""
        _require_reader(p)
        require_id(agent_id, "agent_id")
        tenant = None if p.is_service else p.tenant_id
        if not await self._store.agent_exists(tenant, agent_id, include_deleted=True):
            raise errors.NotFound(f"agent {agent_id!r} not found", reason="AGENT_NOT_FOUND")
        return tenant

    async def list_versions(
        self, p: Principal, agent_id: str, *, page_size_: int, page_token: str
    ) -> Page[AgentVersion]:
        if p.is_service:
            raise errors.PermissionDenied("a service identity may read agents and versions by id only")
        await self._versions_visible(p, agent_id)

        async def fetch(before: int | None, limit: int) -> list[AgentVersion]:
            return await self._store.list_versions(p.tenant_id, agent_id, before=before, limit=limit)

        return await paginate(
            self._pages,
            ("agents.versions", p.tenant_id, agent_id),
            page_size=page_size_,
            page_token=page_token,
            parse=position,
            fetch=fetch,
            cursor_of=lambda v: v.version,
        )

    async def get_version(self, p: Principal, agent_id: str, version: int) -> AgentVersion:
        if version <= 0:
            raise errors.InvalidArgument.field("version", "must be a positive version number")
        tenant = await self._versions_visible(p, agent_id)
        found = await self._store.get_version(tenant, agent_id, version)
        if found is None:
            raise errors.NotFound(f"agent {agent_id!r} has no version {version}", reason="VERSION_NOT_FOUND")
        return found

    async def diff_versions(
        self, p: Principal, agent_id: str, from_version: int, to_version: int
    ) -> list[FieldDiff]:
        bad = [
            errors.FieldViolation(name, "must be a positive version number")
            for name, value in (("from_version", from_version), ("to_version", to_version))
            if value <= 0
        ]
        if bad:
            raise errors.InvalidArgument("bad version numbers", bad)
        old = await self.get_version(p, agent_id, from_version)
        new = await self.get_version(p, agent_id, to_version)
        return diff_content(old.content, new.content)

    # -- validation ---------------------------------------------------------------------------

    async def validate(
        self, p: Principal, display_name: str, config: dict[str, Any]
    ) -> list[errors.Violation]:
        """A dry run of CreateAgent's rules: every violation, format and tier, none raised."""
        _require_reader(p)
        limits = limits_for(p.tier)
        out = [
            errors.Violation(v.field, v.description)
            for v in validation.check_names(display_name, "")
            + validation.check_config(config, tool_hosts=self._tool_hosts)
        ]
        # A field already wrong in format is not reported again as over a tier limit.
        flagged = {v.subject for v in out}
        out += [v for v in validation.check_tier(config, limits) if v.subject not in flagged]
        if await self._store.count_agents(p.tenant_id) >= limits.max_agents:
            out.append(
                errors.Violation(
                    "tenant",
                    f"the {limits.name} tier allows {limits.max_agents} agents",
                    validation.LIMIT_MAX_AGENTS,
                )
            )
        return out

    def _check_content(self, p: Principal, content: dict[str, Any], *, prefix: str) -> None:
        """Format rules (INVALID_ARGUMENT) first, then the tier (FAILED_PRECONDITION)."""
        bad = validation.check_names(content["display_name"], content["description"], prefix=prefix)
        bad += validation.check_config(
            content["config"],
            tool_hosts=self._tool_hosts,
            prefix=f"{prefix}.config" if prefix else "config",
        )
        if bad:
            raise errors.InvalidArgument(
                f"{len(bad)} invalid field(s): {bad[0].field}: {bad[0].description}", bad
            )
        self._check_tier(p, content["config"], prefix=f"{prefix}.config" if prefix else "config")

    def _check_tier(self, p: Principal, config: dict[str, Any], *, prefix: str) -> None:
        over = validation.check_tier(config, limits_for(p.tier), prefix=prefix)
        if over:
            raise errors.FailedPrecondition(
                f"the {p.tier} tier does not allow this config: " + "; ".join(v.description for v in over),
                over,
                reason="TIER_LIMIT",
            )

    # -- writes -------------------------------------------------------------------------------

    async def create_agent(
        self,
        p: Principal,
        *,
        display_name: str,
        description: str,
        state: str | None,
        config: dict[str, Any],
        template_id: str,
        request_id: str,
    ) -> Agent:
        _require_writer(p)
        limits = limits_for(p.tier)
        require_request_id(request_id)
        if request_id:
            replay = await self._replayed_agent(p, request_id)
            if replay is not None:
                return replay
        if template_id:
            template = await self.get_template(p, template_id)
            config = {**template.config, **config}
        content: dict[str, Any] = {
            "display_name": display_name,
            "description": description,
            "state": state or ACTIVE,
            "config": config,
        }
        self._check_content(p, content, prefix="agent")
        now = self._now_us()
        agent = Agent(
            id=self._new_id(),
            tenant_id=p.tenant_id,
            display_name=display_name,
            description=description,
            state=content["state"],
            config=config,
            version=1,
            creator=p.user_id,
            template_id=template_id,
            create_time_us=now,
            update_time_us=now,
        )
        version = self._version_row(agent, ChangeType.CREATED, _changed_paths({}, content), p, now)
        try:
            await self._store.create_agent(
                agent, version, max_agents=limits.max_agents, request_id=request_id
            )
        except DuplicateRequest:
            replay = await self._replayed_agent(p, request_id)
            if replay is None:  # pragma: no cover - the first create committed, so it is there
                raise errors.Aborted("a concurrent create with this request id is in progress") from None
            return replay
        except LimitReached:
            raise errors.QuotaExceeded(
                f"the {limits.name} tier allows {limits.max_agents} agents",
                [
                    errors.Violation(
                        "tenant", f"at most {limits.max_agents} agents", validation.LIMIT_MAX_AGENTS
                    )
                ],
            ) from None
        await self._publish(ChangeType.CREATED, agent, now)
        return agent

    async def _replayed_agent(self, p: Principal, request_id: str) -> Agent | None:
        agent_id = await self._store.find_request(p.tenant_id, "agent", request_id)
        if agent_id is None:
            return None
        agent = await self._store.get_agent(p.tenant_id, agent_id)
        if agent is None:
            raise errors.NotFound(
                f"the agent created by request {request_id!r} has been deleted", reason="AGENT_NOT_FOUND"
            )
        return agent

    async def update_agent(
        self, p: Principal, agent_id: str, *, etag: str, paths: list[str], patch: dict[str, Any]
    ) -> Agent:
        """Applies `paths` of `patch` (content form); a path whose field is unset in the patch clears it."""
        _require_writer(p)
        require_id(agent_id, "agent.id")
        paths = _normalize_paths(paths)

        def change(current: dict[str, Any]) -> dict[str, Any]:
            new = {**current, "config": dict(current["config"])}
            for path in paths:
                if path.startswith("config."):
                    name = path.removeprefix("config.")
                    if name in patch["config"]:
                        new["config"][name] = patch["config"][name]
                    else:
                        new["config"].pop(name, None)
                else:
                    new[path] = patch[path]
            return new

        return await self._change(p, agent_id, etag, ChangeType.UPDATED, change, prefix="agent")

    async def set_state(self, p: Principal, agent_id: str, *, etag: str, active: bool) -> Agent:
        """Activate or deactivate; a no-op (no new version) when the agent is already in that state."""
        _require_writer(p)
        require_id(agent_id, "agent_id")
        target = ACTIVE if active else INACTIVE
        kind = ChangeType.ACTIVATED if active else ChangeType.DEACTIVATED
        return await self._change(
            p,
            agent_id,
            etag,
            kind,
            lambda c: {**c, "state": target},
            prefix="",
            check_format=False,
            tier=active,
        )

    async def rollback(self, p: Principal, agent_id: str, *, version: int, etag: str) -> Agent:
        """A new version with the old version's name, description and config; the state stays as it is."""
        _require_writer(p)
        require_id(agent_id, "agent_id")
        if version <= 0:
            raise errors.InvalidArgument.field("version", "must be a positive version number")
        source = await self._store.get_version(p.tenant_id, agent_id, version)
        if source is None or not await self._store.agent_exists(p.tenant_id, agent_id, include_deleted=False):
            raise errors.NotFound(f"agent {agent_id!r} has no version {version}", reason="VERSION_NOT_FOUND")

        def change(current: dict[str, Any]) -> dict[str, Any]:
            return {**source.content, "state": current["state"]}

        return await self._change(
            p,
            agent_id,
            etag,
            ChangeType.ROLLED_BACK,
            change,
            prefix="",
            check_format=False,
            source_version=version,
        )

    async def delete_agent(self, p: Principal, agent_id: str, *, etag: str) -> None:
        _require_writer(p)
        require_id(agent_id, "agent_id")
        await self._change(
            p,
            agent_id,
            etag,
            ChangeType.DELETED,
            lambda c: c,
            prefix="",
            check_format=False,
            tier=False,
            delete=True,
        )

    async def _change(
        self,
        p: Principal,
        agent_id: str,
        etag: str,
        kind: ChangeType,
        change: Callable[[dict[str, Any]], dict[str, Any]],
        *,
        prefix: str,
        check_format: bool = True,
        tier: bool = True,
        delete: bool = False,
        source_version: int = 0,
    ) -> Agent:
        for _ in range(_LAST_WRITER_ATTEMPTS):
            current = await self._store.get_agent(p.tenant_id, agent_id)
            if current is None:
                raise errors.NotFound(f"agent {agent_id!r} not found", reason="AGENT_NOT_FOUND")
            _check_etag(etag, current)
            content = change(current.content())
            if kind in (ChangeType.ACTIVATED, ChangeType.DEACTIVATED) and content == current.content():
                return current
            if check_format:
                self._check_content(p, content, prefix=prefix)
            elif tier:
                self._check_tier(p, content["config"], prefix="config")
            now = self._now_us()
            new = current.with_content(content, version=current.version + 1, now_us=now)
            changed = [] if delete else _changed_paths(current.content(), content)
            row = self._version_row(new, kind, changed, p, now, source_version=source_version)
            try:
                await self._store.write_version(new, row, expected_version=current.version, delete=delete)
            except VersionConflict:
                if etag:
                    raise errors.Aborted(
                        "the agent changed concurrently; read it again and retry", reason="ETAG_MISMATCH"
                    ) from None
                continue
            await self._publish(
                kind,
                None if delete else new,
                now,
                agent_id=agent_id,
                tenant_id=p.tenant_id,
                version=new.version,
            )
            return new
        raise errors.Aborted("the agent keeps changing concurrently; retry", reason="CONCURRENT_CHANGES")

    def _version_row(
        self,
        agent: Agent,
        kind: ChangeType,
        changed: list[str],
        p: Principal,
        now: int,
        *,
        source_version: int = 0,
    ) -> AgentVersion:
        return AgentVersion(
            agent_id=agent.id,
            tenant_id=agent.tenant_id,
            version=agent.version,
            content=agent.content(),
            change_type=kind,
            changed_fields=changed,
            author=p.user_id,
            create_time_us=now,
            source_version=source_version,
        )

    async def _publish(
        self,
        kind: ChangeType,
        agent: Agent | None,
        now: int,
        *,
        agent_id: str = "",
        tenant_id: str = "",
        version: int = 0,
    ) -> None:
        await self._events.publish(
            AgentEvent(
                change_type=kind,
                tenant_id=agent.tenant_id if agent else tenant_id,
                agent_id=agent.id if agent else agent_id,
                version=agent.version if agent else version,
                agent=agent,
                event_time_us=now,
            )
        )

    # -- templates ----------------------------------------------------------------------------

    async def get_template(self, p: Principal, template_id: str) -> Template:
        _require_reader(p)
        require_id(template_id, "template_id")
        found = find_builtin(template_id) or await self._store.get_template(p.tenant_id, template_id)
        if found is None:
            raise errors.NotFound(f"template {template_id!r} not found", reason="TEMPLATE_NOT_FOUND")
        return found

    async def list_templates(self, p: Principal, *, page_size_: int, page_token: str) -> Page[Template]:
        """Built-in templates first (by id), then the tenant's own (oldest first)."""
        _require_reader(p)

        async def fetch(after: tuple[str, int, str] | None, limit: int) -> list[Template]:
            if after is not None and after[0] == "t":
                return await self._store.list_templates(p.tenant_id, after=after[1:], limit=limit)
            last = after[2] if after else ""
            items = [t for t in sorted(builtin_templates(), key=lambda t: t.id) if t.id > last]
            return items + await self._store.list_templates(p.tenant_id, after=None, limit=limit)

        return await paginate(
            self._pages,
            ("agents.templates", p.tenant_id),
            page_size=page_size_,
            page_token=page_token,
            parse=_template_cursor,
            fetch=fetch,
            cursor_of=lambda t: ["b", t.id] if t.builtin else ["t", t.create_time_us, t.id],
        )

    async def create_template(
        self, p: Principal, *, display_name: str, description: str, config: dict[str, Any], request_id: str
    ) -> Template:
        _require_writer(p)
        require_request_id(request_id)
        if request_id:
            existing = await self._store.find_request(p.tenant_id, "template", request_id)
            if existing is not None:
                return await self.get_template(p, existing)
        bad = validation.check_names(display_name, description, prefix="template")
        bad += validation.check_config(config, tool_hosts=self._tool_hosts, prefix="template.config")
        if bad:
            raise errors.InvalidArgument(
                f"{len(bad)} invalid field(s): {bad[0].field}: {bad[0].description}", bad
            )
        template = Template(
            id=f"tpl-{self._new_id()}",
            tenant_id=p.tenant_id,
            display_name=display_name,
            description=description,
            config=config,
            create_time_us=self._now_us(),
        )
        try:
            await self._store.create_template(template, request_id=request_id)
        except DuplicateRequest:
            existing = await self._store.find_request(p.tenant_id, "template", request_id)
            return await self.get_template(p, existing or template.id)
        return template

    async def delete_template(self, p: Principal, template_id: str) -> None:
        _require_writer(p)
        require_id(template_id, "template_id")
        if template_id.startswith(BUILTIN_PREFIX) and find_builtin(template_id) is not None:
            raise errors.FailedPrecondition(
                f"template {template_id!r} is built in and cannot be deleted", reason="BUILTIN_TEMPLATE"
            )
        if not await self._store.delete_template(p.tenant_id, template_id):
            raise errors.NotFound(f"template {template_id!r} not found", reason="TEMPLATE_NOT_FOUND")

    # -- watch --------------------------------------------------------------------------------

    def watch(
        self, p: Principal, *, all_tenants: bool, on_ready: Callable[[], Awaitable[None]] | None = None
    ) -> AsyncIterator[AgentEvent]:
        _require_reader(p)
        if all_tenants and not p.is_service:
            raise errors.PermissionDenied(
                "only a service identity may watch every tenant", reason="SERVICE_ONLY"
            )
        return self._events.subscribe(None if all_tenants else p.tenant_id, on_ready=on_ready)


def _normalize_paths(paths: list[str]) -> list[str]:
    if not paths:
        raise errors.InvalidArgument.field(
            "update_mask", 'is required (use "*" to replace every updatable field)'
        )
    bad = [
        errors.FieldViolation("update_mask", f"unknown or immutable path {path!r}")
        for path in paths
        if path != "*" and path not in UPDATABLE_PATHS
    ]
    if bad:
        raise errors.InvalidArgument(f"bad update_mask: {bad[0].description}", bad)
    if "*" in paths:
        return ["display_name", "description", "config"]
    # "config" replaces the whole config, so "config.x" beside it adds nothing.
    if "config" in paths:
        paths = [path for path in paths if not path.startswith("config.")]
    return list(dict.fromkeys(paths))


def _template_cursor(cursor: Any) -> tuple[str, int, str]:
    """("b", 0, id) after a built-in template, ("t", create_time_us, id) after a tenant's own."""
    if isinstance(cursor, list) and cursor[:1] == ["b"] and len(cursor) == 2 and isinstance(cursor[1], str):
        return ("b", 0, cursor[1])
    if isinstance(cursor, list) and cursor[:1] == ["t"]:
        return ("t", *keyset(cursor[1:]))
    raise ValueError("not a template cursor")
