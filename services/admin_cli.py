"""`agentmesh admin`: the platform operator's commands (tenants, tiers, quotas, prices, usage, password
resets).

The operator is no tenant's user and holds no token: these commands work on the databases
directly, each table in the database of the service that owns it: tenants and users in identity's
(services.identity.operator), prices, quotas and usage in conversation's. One shared database
(DATABASE_URL, or `agentmesh up --data-dir`) holds both; where the services have databases of their
own, AGENTMESH_IDENTITY_DATABASE_URL and AGENTMESH_CONVERSATION_DATABASE_URL name them.
Exit codes: 0 done, 1 refused (not found, taken, bad value), 2 configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import decimal
import secrets
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TextIO

import sqlalchemy.exc

from services.conversation.hot_window import HotWindow
from services.conversation.models import GROUPINGS, QuotaLimit
from services.conversation.search import MessageSearch
from services.conversation.service import ConversationService
from services.conversation.store import ConversationStore
from services.conversation.tokens import ApproximateTokenCounter
from services.identity.models import TIERS, Tenant
from services.identity.operator import Operator, operator_principal
from services.identity.passwords import Passwords
from services.identity.redis_state import Revocations
from services.identity.store import IdentityStore
from services.platform import db, errors, migrations, redis_client
from services.platform.metrics import USAGE
from services.platform.pagination import PageTokens
from services.platform.settings import Settings, SettingsError

GENERATED_PASSWORD_BYTES = 15  # 20 URL-safe characters


def _settings(args: argparse.Namespace) -> Settings:
    """--data-dir: the embedded SQLite of `agentmesh up` (both services' tables); else the databases
    the environment names. Never a silent default: an operator must not create tenants in a stray
    ./.agentmesh by mistake."""
    settings = Settings.from_env()
    if args.data_dir:
        return dataclasses.replace(
            settings,
            data_dir=args.data_dir,
            database_url="",
            identity_database_url="",
            conversation_database_url="",
            embedded=True,
        )
    _database_url(settings, "identity")  # every command finds its tenant there
    return settings


def _database_url(settings: Settings, service: str) -> str:
    url = settings.database_url_for(service)
    if not url:
        raise SettingsError(
            f"DATABASE_URL is not set (nor AGENTMESH_{service.upper()}_DATABASE_URL): `agentmesh admin` "
            f"needs {service}'s database (or --data-dir DIR for the embedded one of `agentmesh up`)"
        )
    return url


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
    engine = db.create_engine(_database_url(settings, "identity"))
    redis = redis_client.create_redis(settings.redis_url, mode=settings.redis_mode)
    try:
        if settings.embedded:
            # As `agentmesh up` does: the operator may create the first tenant before the first start.
            await migrations.upgrade(engine, ["identity", "conversation"])
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


@contextlib.asynccontextmanager
async def _conversation(args: argparse.Namespace) -> AsyncIterator[ConversationService]:
    """Conversation's service over its tables (prices, quotas and usage), in conversation's database;
    only its operator use cases are called, so nothing reads the hot window or page tokens."""
    settings = _settings(args)
    engine = db.create_engine(_database_url(settings, "conversation"))
    redis = redis_client.create_redis(settings.redis_url)
    try:
        yield ConversationService(
            store=ConversationStore(engine),
            search=MessageSearch(engine),
            hot=HotWindow(redis),
            counter=ApproximateTokenCounter(),
            page_tokens=PageTokens(secrets.token_bytes(32)),
            meter=USAGE,
        )
    finally:
        await redis.aclose()
        await engine.dispose()


async def _tenant(op: Operator, name: str) -> Tenant:
    found = [t for t in await op.list_tenants(operator_principal()) if t.name == name]
    if not found:
        raise errors.NotFound(f"tenant {name!r} not found")
    return found[0]


def _micros(value: str, field: str) -> int:
    """A decimal amount of the price currency ("2.5") in millionths, exactly."""
    try:
        amount = decimal.Decimal(value)
    except decimal.InvalidOperation:
        raise errors.InvalidArgument.field(field, f"must be a decimal number, got {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise errors.InvalidArgument.field(field, "must be a number not below 0")
    return int((amount * 1_000_000).to_integral_value(decimal.ROUND_HALF_UP))


def _amount(micros: int) -> str:
    return f"{decimal.Decimal(micros) / 1_000_000:f}"


def _tenants_set_quota(args: argparse.Namespace) -> Callable[[Operator], Awaitable[str]]:
    async def work(op: Operator) -> str:
        tenant = await _tenant(op, args.name)
        limit = QuotaLimit(tokens=args.tokens, cost_micros=_micros(args.cost, "cost"))
        async with _conversation(args) as conv:
            await conv.set_quota(operator_principal(), tenant.id, limit)
        cost = f", cost {args.cost} a month" if limit.cost_micros else ""
        return f"tenant {tenant.name}: {limit.tokens or 'unlimited'} tokens a month{cost} (instead of tier {tenant.tier}'s)"

    return work


def _prices_set(args: argparse.Namespace) -> Callable[[Operator], Awaitable[str]]:
    async def work(op: Operator) -> str:
        async with _conversation(args) as conv:
            price = await conv.set_price(
                operator_principal(),
                args.model,
                input_micros=_micros(args.input, "input"),
                output_micros=_micros(args.output, "output"),
            )
        return (
            f"{price.model}: {_amount(price.input_micros)} input, {_amount(price.output_micros)} output "
            "per million tokens, for messages stored from now on"
        )

    return work


def _prices_list(args: argparse.Namespace) -> Callable[[Operator], Awaitable[str]]:
    async def work(op: Operator) -> str:
        async with _conversation(args) as conv:
            prices = await conv.list_prices(operator_principal())
        rows = [("MODEL", "INPUT/1M", "OUTPUT/1M", "SET")] + [
            (p.model, _amount(p.input_micros), _amount(p.output_micros), _minute(p.update_time))
            for p in prices
        ]
        width = max(len(r[0]) for r in rows)
        return "\n".join(f"{r[0]:<{width}}  {r[1]:>12}  {r[2]:>12}  {r[3]}" for r in rows)

    return work


USAGE_COLUMNS = (
    "user_id",
    "agent_id",
    "model",
    "day",
    "messages",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "tool_calls",
    "cost_micros",
)


def _usage(args: argparse.Namespace) -> Callable[[Operator], Awaitable[str]]:
    async def work(op: Operator) -> str:
        tenant = await _tenant(op, args.name)
        start = end = 0
        if args.month:
            try:
                first = datetime.datetime.strptime(args.month, "%Y-%m").replace(tzinfo=datetime.UTC)
            except ValueError:
                raise errors.InvalidArgument.field("month", f"must be YYYY-MM, got {args.month!r}") from None
            following = (first + datetime.timedelta(days=32)).replace(day=1)
            start, end = int(first.timestamp()) * 1_000_000, int(following.timestamp()) * 1_000_000
        async with _conversation(args) as conv:
            usage = await conv.get_usage(
                operator_principal(),
                start_time=start,
                end_time=end,
                group_by=args.group_by or (),
                tenant=tenant.id,
                tier=tenant.tier,
            )
        table = [USAGE_COLUMNS] + [
            tuple(str(getattr(r, c)) for c in USAGE_COLUMNS) for r in (*usage.rows, usage.totals)
        ]
        table[-1] = ("TOTAL", *table[-1][1:])
        widths = [max(len(row[i]) for row in table) for i in range(len(USAGE_COLUMNS))]
        lines = [
            "  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths, strict=True)).rstrip() for row in table
        ]
        q = usage.quota
        lines.append(
            f"quota this month: {q.used_tokens} of {q.limit_tokens or 'unlimited'} tokens; "
            f"resets {_minute(q.reset_time)} UTC"
        )
        return "\n".join(lines)

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
            f"agentmesh admin: database error ({reason}); are DATABASE_URL (or AGENTMESH_IDENTITY_DATABASE_URL / "
            "AGENTMESH_CONVERSATION_DATABASE_URL) right and `agentmesh migrate` done?",
            file=sys.stderr,
        )
        return 1
    return 0


def add_parser(sub: Any) -> None:
    """Registers `agentmesh admin ...` on the top-level subparsers."""
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--data-dir", help="the embedded data dir of `agentmesh up` (default: DATABASE_URL)")
    admin = sub.add_parser(
        "admin", help="platform operator: tenants, tiers, quotas, prices, usage, password resets"
    )
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
    set_quota = tenants.add_parser(
        "set-quota", parents=[where], help="the tenant's own monthly quota instead of its tier's"
    )
    set_quota.add_argument("name")
    set_quota.add_argument("--tokens", type=int, required=True, help="tokens a month; 0: unlimited")
    set_quota.add_argument("--cost", default="0", help="cost a month in the price currency; 0: unlimited")
    set_quota.set_defaults(admin_command=_tenants_set_quota)

    prices = groups.add_parser("prices", help="set, list").add_subparsers(dest="admin_action", required=True)
    price_set = prices.add_parser(
        "set", parents=[where], help="a model's price per million tokens; stored messages keep their cost"
    )
    price_set.add_argument("model", help='"provider:model" as agents name it')
    price_set.add_argument("--input", required=True, help="price of a million prompt tokens")
    price_set.add_argument("--output", required=True, help="price of a million completion tokens")
    price_set.set_defaults(admin_command=_prices_set)
    prices.add_parser("list", parents=[where], help="every model's price").set_defaults(
        admin_command=_prices_list
    )

    usage = groups.add_parser("usage", parents=[where], help="a tenant's usage (GetUsage's rows) and quota")
    usage.add_argument("name", metavar="TENANT")
    usage.add_argument("--month", help="YYYY-MM (UTC); default: this month")
    usage.add_argument("--group-by", nargs="+", choices=GROUPINGS, help="default: user agent model day")
    usage.set_defaults(admin_command=_usage)

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
