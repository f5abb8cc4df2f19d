"""The tenant's monthly quota for WhoAmI, asked of conversation, which owns usage (identity reads
no table of conversation's), through `peers.call` on the peer channel, which forwards the caller's
token and deadline: CheckQuota, the cheaper call (it reads no usage totals), and, only when that
refuses because the quota is used up, GetUsage, whose answer carries the quota all the same. A
conversation that is down, slow or refuses otherwise makes the quota UNKNOWN; WhoAmI answers all
the same."""

from __future__ import annotations

import logging

import grpc

from agentmesh.conversation.v1 import conversation_service_pb2 as conv_pb
from agentmesh.conversation.v1 import conversation_service_pb2_grpc as conv_grpc
from services.identity.models import UNKNOWN_QUOTA, TenantQuota
from services.platform import errors, peers

log = logging.getLogger("agentmesh.identity")

# WhoAmI is on every page load and WebSocket connect: the quota may not hold it up for long (the
# caller's own remaining deadline wins when shorter).
QUOTA_TIMEOUT_SECONDS = 2.0
# CheckQuota's reason when a monthly limit is used up (conversation's service.check_quota).
USED_UP = "MONTHLY_QUOTA_EXHAUSTED"


class ConversationQuota:
    """`Quota` (service.py) over conversation's GetUsage."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout: float = QUOTA_TIMEOUT_SECONDS):
        self._stub = conv_grpc.ConversationServiceStub(channel)
        self._timeout = timeout

    async def quota(self) -> TenantQuota:
        try:
            q = await self._read()
        except errors.AgentmeshError as exc:
            log.warning(
                "quota unknown: conversation did not answer",
                extra={"fields": {"code": exc.code.name, "error": exc.message[:300]}},
            )
            return UNKNOWN_QUOTA
        return TenantQuota(
            limit_tokens=q.limit_tokens,
            used_tokens=q.used_tokens,
            remaining_tokens=q.remaining_tokens,
            limit_cost_micros=q.limit_cost_micros,
            used_cost_micros=q.used_cost_micros,
            reset_time_us=q.reset_time.ToMicroseconds() if q.HasField("reset_time") else 0,
        )

    async def _read(self) -> conv_pb.Quota:
        try:
            checked = await peers.call(
                self._stub.CheckQuota, conv_pb.CheckQuotaRequest(), timeout=self._timeout
            )
            return checked.quota
        except errors.ResourceExhausted as exc:
            if exc.reason != USED_UP:
                raise
        usage = await peers.call(self._stub.GetUsage, conv_pb.GetUsageRequest(), timeout=self._timeout)
        return usage.quota


class NoQuota:
    """`Quota` where no conversation address is configured: always UNKNOWN."""

    async def quota(self) -> TenantQuota:
        return UNKNOWN_QUOTA
