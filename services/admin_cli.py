"""`agentmesh admin`: the platform operator's commands (tenants, tiers, password resets).

The operator is no tenant's user and holds no token: these commands work on identity's database
directly (services.identity.operator), the one `agentmesh up --data-dir` or `agentmesh serve`
(DATABASE_URL) uses. Exit codes: 0 done, 1 refused (not found, taken, bad value), 2 configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

import sqlalchemy.exc

from services.identity.models import TIERS
from services.identity.operator import Operator, operator_principal
from services.identity.passwords import Passwords
from services.identity.redis_state import Revocations
from services.identity.store import IdentityStore
from services.platform import db, errors, migrations, redis_client
from services.platform.settings import Settings, SettingsError

GENERATED_PASSWORD_BYTES = 15  # 20 URL-safe characters


def _settings(args: argparse.Namespace) -> Settings:
    """--data-dir: the embedded SQLite of `agentmesh up`; else DATABASE_URL. Never a silent default:
    an operator must not create tenants in a stray ./.agentmesh by mistake."""
    settings = Settings.from_env()
    if args.data_dir:
        return dataclasses.replace(settings, data_dir=args.data_dir, database_url="", embedded=True)
    if not settings.database_url:
        raise SettingsError(
            "DATABASE_URL is not set: `agentmesh admin` needs identity's database "
            "(or --data-dir DIR for the embedded one of `agentmesh up`)"
        )
    return settings


def _password(stdin: TextIO, out: TextIO, whose: str) -> str:
    """The first line of a piped stdin; otherwise a generated password, printed once."""
    if not stdin.isatty():
        given = stdin.readline().rstrip("\r\n")
        if given:
            return given
    generated = secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)
    print(f"password of {whose} (shown once; have them change it): {generated}", file=out)
    return generated


async def _with_operator(settings: Settings, work: Callable[[Operator], Awaitable[str]]) -> str:
    engine = db.create_engine(settings.effective_database_url)
    redis = redis_client.create_redis(settings.redis_url, mode=settings.redis_mode)
    try:
        if settings.embedded:
            # As `agentmesh up` does: the operator may create the first tenant before the first start.
            await migrations.upgrade(engine, ["identity"])
        operator = Operator(
            store=IdentityStore(engine),
            passwords=Passwords(),
            revocations=Revocations(redis, access_ttl=settings.auth.access_token_ttl_seconds),
            clock=time.time,
        )
        return await work(operator)
    finally:
        await redis.aclose()
        await engine.dispose()


def _minute(us: int) -> str:
    return datetime.datetime.fromtimestamp(us / 1_000_000, datetime.UTC).strftime("%Y-%m-%d %H:%M")


def _tenants_list(args: argparse.Namespace) -> Callable[[Operator], Awaitable[str]]:
    async def work(op: Operator) -> str:
        rows = [("NAME", "TIER", "CREATED", "DISPLAY NAME")] + [
            (t.name, t.tier, _minute(t.create_time), t.display_name)
            for t in await op.list_tenants(operator_principal())
        ]
        width = max(len(r[0]) for r in rows)
        return "\n".join(f"{r[0]:<{width}}  {r[1]:<10}  {r[2]:<16}  {r[3]}" for r in rows)

    return work


def _tenants_create(args: argparse.Namespace) -> Callable[[Operator], Awaitable[str]]:
    password = _password(sys.stdin, sys.stdout, f"{args.owner} in {args.name}")

    async def work(op: Operator) -> str:
        tenant, user = await op.create_tenant(
            operator_principal(), name=args.name, tier=args.tier, owner=args.owner, password=password
        )
        return f"created tenant {tenant.name} (tier {tenant.tier}, id {tenant.id}) with owner {user.username}"

    return work


def _tenants_set_tier(args: argparse.Namespace) -> Callable[[Operator], Awaitable[str]]:
    async def work(op: Operator) -> str:
        tenant = await op.set_tier(operator_principal(), name=args.name, tier=args.tier)
        return f"tenant {tenant.name} is on tier {tenant.tier} (tokens issued from now on carry it)"

    return work


def _users_reset_password(args: argparse.Namespace) -> Callable[[Operator], Awaitable[str]]:
    password = _password(sys.stdin, sys.stdout, f"{args.user} in {args.tenant}")

    async def work(op: Operator) -> str:
        await op.reset_password(
            operator_principal(), tenant=args.tenant, username=args.user, password=password
        )
        return f"password of {args.user} in {args.tenant} reset; their sessions are ended"

    return work


def cmd_admin(args: argparse.Namespace) -> int:
    settings = _settings(args)
    work = args.admin_command(args)
    try:
        print(asyncio.run(_with_operator(settings, work)))
    except errors.AgentmeshError as exc:
        print(f"agentmesh admin: {exc.message}", file=sys.stderr)
        return 1
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.ProgrammingError) as exc:
        reason = str(exc.orig or exc).strip().splitlines()[0]
        print(
            f"agentmesh admin: database error ({reason}); is DATABASE_URL right and `agentmesh migrate` done?",
            file=sys.stderr,
        )
        return 1
    return 0


def add_parser(sub: Any) -> None:
    """Registers `agentmesh admin ...` on the top-level subparsers."""
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--data-dir", help="the embedded data dir of `agentmesh up` (default: DATABASE_URL)")
    admin = sub.add_parser("admin", help="platform operator: tenants, tiers, password resets")
    admin.set_defaults(func=cmd_admin)
    groups = admin.add_subparsers(dest="admin_group", required=True)

    tenants = groups.add_parser("tenants", help="list, create, set-tier").add_subparsers(
        dest="admin_action", required=True
    )
    listing = tenants.add_parser("list", parents=[where], help="every tenant with its tier")
    listing.set_defaults(admin_command=_tenants_list)
    create = tenants.add_parser(
        "create",
        parents=[where],
        help="a tenant and its owner; the password from stdin (first line) or generated and printed once",
    )
    create.add_argument("name")
    create.add_argument("--tier", required=True, choices=TIERS)
    create.add_argument("--owner", required=True, metavar="USER")
    create.set_defaults(admin_command=_tenants_create)
    set_tier = tenants.add_parser("set-tier", parents=[where], help="move a tenant to another tier")
    set_tier.add_argument("name")
    set_tier.add_argument("tier", choices=TIERS)
    set_tier.set_defaults(admin_command=_tenants_set_tier)

    users = groups.add_parser("users", help="reset-password").add_subparsers(
        dest="admin_action", required=True
    )
    reset = users.add_parser(
        "reset-password",
        parents=[where],
        help="set a user's password (stdin, or generated and printed once) and end their sessions",
    )
    reset.add_argument("tenant")
    reset.add_argument("user")
    reset.set_defaults(admin_command=_users_reset_password)
