"""The monthly quota check of run admission, shared by the admissions of a tenant that arrive together.

Every admission asks conversation's CheckQuota; concurrent admissions of one tenant (and tier: the
tier picks the default limit) share one call. A call is shared only by admissions that arrived
before it started (platform.batching.Batcher: the ones that arrive while a call is on the wire wait
for the next), so each admission's answer reads the month at or after its arrival, exactly as its
own call would: the overrun bound of docs/orchestration.md is unchanged. Not a cache: nothing is
remembered between calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Sequence
from typing import Protocol

from services.orchestration.models import QuotaState
from services.platform import errors
from services.platform.auth import Principal
from services.platform.batching import Batcher


class QuotaSource(Protocol):
    async def check_quota(self, *, token: str) -> QuotaState: ...


class QuotaChecks:
    def __init__(self, source: QuotaSource):
        self._source = source
        self._batcher: Batcher[Principal, QuotaState] = Batcher(self._check_all, max_batch=512)

    async def check(self, caller: Principal) -> QuotaState:
        """The tenant's quota; RESOURCE_EXHAUSTED (conversation's QuotaFailure) when used up."""
        return await self._batcher.submit(caller)

    async def _check_all(self, callers: list[Principal]) -> list[QuotaState | BaseException]:
        groups: dict[Hashable, list[int]] = {}
        for index, caller in enumerate(callers):
            groups.setdefault((caller.tenant_id, caller.tier), []).append(index)
        outcomes: list[QuotaState | BaseException] = [QuotaState()] * len(callers)
        answers = await asyncio.gather(
            *(self._check_group([callers[i] for i in members]) for members in groups.values())
        )
        for members, answer in zip(groups.values(), answers, strict=True):
            for index, outcome in zip(members, answer, strict=True):
                outcomes[index] = outcome
        return outcomes

    async def _check_group(self, callers: Sequence[Principal]) -> list[QuotaState | BaseException]:
        """One call with the first caller's token answers the tenant's quota for all of them. Any
        other failure than a used-up quota may be that token's own (expired, logged out): then each
        caller asks with its own."""
        try:
            return [await self._source.check_quota(token=callers[0].token)] * len(callers)
        except errors.ResourceExhausted as exc:
            return [exc] * len(callers)
        except Exception as exc:
            if len(callers) == 1:
                return [exc]
        return list(
            await asyncio.gather(
                *(self._source.check_quota(token=c.token) for c in callers), return_exceptions=True
            )
        )
