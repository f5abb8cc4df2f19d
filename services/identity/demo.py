"""The embedded mode's demo data: tenant "demo" (pro) with user_1/1234 (owner), user_2/5678 (member).

Only `agentmesh up` (embedded) calls this; the short passwords skip the policy on purpose, as in the
original session manager. Idempotent: what exists is left as it is.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from services.identity.models import Duplicate, Tenant, User
from services.identity.passwords import Passwords
from services.identity.sessions import at
from services.identity.store import IdentityStore
from services.platform.auth import ROLE_MEMBER, ROLE_OWNER

DEMO_TENANT = "demo"
DEMO_USERS = (("user_1", "1234", ROLE_OWNER, "Demo user 1"), ("user_2", "5678", ROLE_MEMBER, "Demo user 2"))


async def seed(store: IdentityStore, passwords: Passwords, clock: Callable[[], float]) -> bool:
    """Creates what is missing of the demo data; True when it created anything."""
    now = at(clock())
    created = False
    tenant = await store.tenant_by_name(DEMO_TENANT)
    pending_tenant: Tenant | None = None
    if tenant is None:
        tenant = pending_tenant = Tenant(
            id=str(uuid.uuid4()),
            name=DEMO_TENANT,
            display_name="Demo",
            tier="pro",
            version=1,
            create_time=now,
            update_time=now,
        )
    for username, password, role, display in DEMO_USERS:
        if pending_tenant is None and await store.user_by_name(tenant.id, username) is not None:
            continue
        user = User(
            id=str(uuid.uuid4()),
            tenant_id=tenant.id,
            username=username,
            display_name=display,
            roles=(role,),
            disabled=False,
            version=1,
            create_time=now,
            update_time=now,
            password_hash=await passwords.hash(password),
        )
        try:
            await store.create(tenant=pending_tenant, user=user, request=None)
        except Duplicate:
            return created
        pending_tenant = None
        created = True
    return created
