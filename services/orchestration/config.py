"""Tunables of the orchestration service (defaults suit production; tests shorten the timings).
The run lease, sweep and event retention come from the settings (AGENTMESH_RUN_*)."""

from __future__ import annotations

import dataclasses

from services.platform.outbound import DEFAULT_MAX_RESPONSE_BYTES
from services.platform.settings import RunSettings, ToolSettings


@dataclasses.dataclass(frozen=True, kw_only=True)
class OrchestrationOptions:
    # A running or queued run holds a Redis lease renewed by its worker; when it lapses the run is failed.
    lease_ttl_seconds: float = 10.0
    lease_renew_seconds: float = 2.0
    # How often every instance looks for runs whose lease lapsed (also once at start-up).
    sweep_interval_seconds: float = 5.0
    # How long a finished run's events stay readable by JoinRun.
    event_retention_seconds: int = 3600
    # XREAD BLOCK time; well under the Redis client's 5 s socket timeout.
    read_block_ms: int = 1000
    # How often a worker checks for a cancel requested on another instance.
    cancel_poll_seconds: float = 0.5
    # Timeout of each unary call to agents and conversation.
    peer_timeout_seconds: float = 10.0
    max_message_bytes: int = 32 * 1024
    # Reconnect backoff of the WatchAgents subscriber.
    watch_backoff_initial_seconds: float = 0.5
    watch_backoff_max_seconds: float = 30.0
    # A WatchAgents stream is re-opened after this long (the peer channel needs a finite timeout).
    watch_stream_seconds: float = 3600.0
    agent_cache_size: int = 10_000
    # Orchestration's own Redis pool (events, leases, limits), a blocking pool of this many
    # connections. A constant: the event hub reads every remote stream with one multiplexed XREAD
    # and writes every run's events in one pipeline, so no stream holds a connection of its own.
    max_stream_readers: int = 64
    # Deltas produced within this window become one event (0: every delta its own event).
    delta_flush_ms: int = 30
    # Events buffered for one stream whose client stopped reading before it is cut.
    reader_buffer_events: int = 2000
    # Events of one run Redis has not taken (it is unreachable) before the run fails UNAVAILABLE.
    redis_buffer_events: int = 10000
    # How long CancelRun waits for the run to reach its end before answering.
    cancel_wait_seconds: float = 2.0
    # A run waiting for tool outputs or approvals fails this long after it began to wait.
    tool_wait_seconds: float = 600.0
    # Hosts http tools may reach on private or loopback addresses (AGENTMESH_TOOL_ALLOWED_HOSTS).
    tool_allowed_hosts: tuple[str, ...] = ()
    # The largest tool result: an http tool's answer, a client's submitted output.
    tool_max_output_bytes: int = DEFAULT_MAX_RESPONSE_BYTES

    @classmethod
    def from_settings(cls, runs: RunSettings, tools: ToolSettings | None = None) -> OrchestrationOptions:
        tools = tools or ToolSettings()
        return cls(
            lease_ttl_seconds=runs.lease_seconds,
            lease_renew_seconds=runs.lease_seconds / 5,
            sweep_interval_seconds=runs.sweep_interval_seconds,
            event_retention_seconds=runs.event_retention_seconds,
            delta_flush_ms=max(0, runs.delta_flush_ms),
            reader_buffer_events=runs.reader_buffer_events,
            redis_buffer_events=runs.redis_buffer_events,
            tool_wait_seconds=tools.wait_seconds,
            tool_allowed_hosts=tools.allowed_hosts,
        )
