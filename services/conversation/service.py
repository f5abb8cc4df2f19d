"""The conversation use cases: tenancy, validation, the context window, retention policy.

Plain Python over a store, a hot window and a token counter; the caller's Principal is passed in, so
this is testable without gRPC. Visibility: owners and admins see the tenant's conversations, members
only their own; anything outside that is NOT_FOUND, exactly like a conversation that does not exist.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any, Protocol

from services.conversation import validation
from services.conversation.context_window import WindowBuilder
from services.conversation.models import (
    ACTIVE,
    DAY_US,
    GROUPINGS,
    Appended,
    AppendRefused,
    BranchRefused,
    ContextWindow,
    Conversation,
    Message,
    NewMessage,
    Price,
    Quota,
    QuotaLimit,
    SearchHit,
    Siblings,
    TenantStats,
    Usage,
    UsageRow,
    new_id,
)
from services.conversation.tokens import TokenCounter
from services.platform import errors, tiers, timestamps
from services.platform.auth import Principal
from services.platform.errors import Violation
from services.platform.pagination import Page, PageTokens, keyset, paginate, position
from services.platform.validation import Violations, require_id, update_paths


class Store(Protocol):
    """The system of record. `only_user` None: every user of the tenant; else that user's alone."""

    async def create_conversation(self, conversation: Conversation, *, request_id: str) -> Conversation: ...
    async def get_conversation(
        self, tenant_id: str, only_user: str | None, conversation_id: str
    ) -> Conversation | None: ...
    async def list_conversations(
        self,
        tenant_id: str,
        only_user: str | None,
        *,
        agent_id: str,
        user_id: str,
        status: str,
        start_time: int,
        end_time: int,
        after: tuple[int, str] | None,
        limit: int,
    ) -> list[Conversation]: ...
    async def close_conversation(
        self, tenant_id: str, only_user: str | None, conversation_id: str, *, now: int
    ) -> Conversation | None: ...
    async def update_conversation(
        self, tenant_id: str, only_user: str | None, conversation_id: str, values: dict[str, Any], *, now: int
    ) -> Conversation | None: ...
    async def delete_conversations(self, conversation_ids: Sequence[str]) -> int: ...
    async def append_message(
        self,
        tenant_id: str,
        only_user: str | None,
        conversation_id: str,
        new: NewMessage,
        *,
        token_count: int,
        request_id: str,
        now: int,
    ) -> Appended | AppendRefused: ...
    async def messages_before(self, conversation_id: str, before: int, *, limit: int) -> list[Message]: ...
    async def list_messages(
        self, conversation_id: str, *, after: int, before: int, descending: bool, limit: int
    ) -> list[Message]: ...
    async def get_message(self, conversation_id: str, message_id: str) -> Message | None: ...
    async def siblings(self, conversation_id: str, parent_ids: Sequence[str]) -> dict[str, Siblings]: ...
    async def path_through(self, conversation_id: str, message_id: str) -> list[Message] | None: ...
    async def edit_message(
        self,
        tenant_id: str,
        only_user: str | None,
        conversation_id: str,
        message_id: str,
        new: NewMessage,
        *,
        token_count: int,
        request_id: str,
        now: int,
    ) -> Appended | BranchRefused: ...
    async def switch_branch(
        self,
        tenant_id: str,
        only_user: str | None,
        conversation_id: str,
        message_id: str,
        *,
        exact: bool,
        now: int,
    ) -> Conversation | BranchRefused: ...
    async def get_retention_days(self, tenant_id: str) -> int: ...
    async def set_retention_days(self, tenant_id: str, days: int, *, now: int) -> None: ...
    async def usage_rows(
        self,
        tenant_id: str,
        *,
        start_day: int,
        end_day: int,
        user_id: str,
        agent_id: str,
        model: str,
        group_by: Sequence[str],
    ) -> list[UsageRow]: ...
    async def used_since(self, tenant_id: str, start_day: int) -> tuple[int, int]: ...
    async def get_quota_limit(self, tenant_id: str) -> QuotaLimit | None: ...
    async def set_quota_limit(self, tenant_id: str, limit: QuotaLimit, *, now: int) -> None: ...
    async def set_price(self, price: Price) -> None: ...
    async def list_prices(self) -> list[Price]: ...


class Meter(Protocol):
    """Where accepted usage is counted for Prometheus (services.platform.metrics.USAGE)."""

    def record(
        self, *, tier: str, model: str, prompt_tokens: int, completion_tokens: int, cost_micros: int
    ) -> None: ...


class HotWindow(Protocol):
    """The newest `size` messages of each conversation, for fast reads; never the record."""

    @property
    def size(self) -> int: ...
    async def append(self, message: Message) -> None: ...
    async def read(self, conversation_id: str, *, max_sequence: int, count: int) -> list[Message] | None: ...
    async def fill(self, conversation_id: str, messages: Sequence[Message]) -> None: ...
    async def drop(self, *conversation_ids: str) -> None: ...


class SearchIndex(Protocol):
    async def search(
        self,
        tenant_id: str,
        only_user: str | None,
        query: str,
        *,
        agent_id: str,
        after: list[Any] | None,
        limit: int,
    ) -> list[tuple[SearchHit, list[Any]]]: ...
    async def stats(
        self, tenant_id: str, only_user: str | None, *, start_time: int, end_time: int
    ) -> TenantStats: ...


# A search page is ranked and gets a snippet per hit: a smaller ceiling than other listings.
SEARCH_MAX_PAGE_SIZE = 100


def _message_not_found(message_id: str) -> errors.NotFound:
    return errors.NotFound(
        f"message {message_id!r} not found", reason="MESSAGE_NOT_FOUND", metadata={"message_id": message_id}
    )


def _closed(conversation_id: str) -> errors.FailedPrecondition:
    return errors.FailedPrecondition(
        f"conversation {conversation_id!r} is closed",
        [Violation("conversation.status", "appending needs an ACTIVE conversation", "CLOSED")],
        reason="CONVERSATION_CLOSED",
    )


def _not_found(conversation_id: str) -> errors.NotFound:
    return errors.NotFound(
        f"conversation {conversation_id!r} not found",
        reason="CONVERSATION_NOT_FOUND",
        metadata={"conversation_id": conversation_id},
    )


class ConversationService:
    def __init__(
        self,
        *,
        store: Store,
        search: SearchIndex,
        hot: HotWindow,
        counter: TokenCounter,
        page_tokens: PageTokens,
        meter: Meter,
        clock: Callable[[], float] = time.time,
        hot_page: int = 64,
        db_page: int = 128,
    ):
        self.store = store
        self.search_index = search
        self.hot = hot
        self.counter = counter
        self.page_tokens = page_tokens
        self.meter = meter
        self.clock = clock
        self.hot_page = hot_page
        self.db_page = db_page

    def _now(self) -> int:
        return timestamps.micros(self.clock)

    @staticmethod
    def only_user(principal: Principal) -> str | None:
        """Whose conversations the caller sees: owners and admins the tenant's, members their own."""
        return None if principal.is_admin else principal.user_id

    async def _visible(self, principal: Principal, conversation_id: str) -> Conversation:
        require_id(conversation_id, "conversation_id")
        conversation = await self.store.get_conversation(
            principal.tenant_id, self.only_user(principal), conversation_id
        )
        if conversation is None:
            raise _not_found(conversation_id)
        return conversation

    # -- conversations -------------------------------------------------------------------------

    async def create_conversation(
        self,
        principal: Principal,
        *,
        agent_id: str,
        agent_version: int,
        title: str,
        metadata: dict[str, str],
        request_id: str,
    ) -> Conversation:
        v = Violations()
        v.id(agent_id, "agent_id")
        v.check(agent_version >= 0, "agent_version", "must not be negative")
        v.check(len(title) <= validation.MAX_TITLE_CHARS, "title", "is too long")
        v.request_id(request_id)
        validation.metadata(v, "metadata", metadata)
        v.raise_if_any()
        now = self._now()
        conversation = Conversation(
            id=new_id(),
            tenant_id=principal.tenant_id,
            user_id=principal.user_id,
            agent_id=agent_id,
            agent_version=agent_version,
            title=title,
            status=ACTIVE,
            metadata=dict(metadata),
            message_count=0,
            token_count=0,
            create_time=now,
            update_time=now,
            last_message_time=0,
            close_time=0,
        )
        return await self.store.create_conversation(conversation, request_id=request_id)

    async def get_conversation(self, principal: Principal, conversation_id: str) -> Conversation:
        return await self._visible(principal, conversation_id)

    async def list_conversations(
        self,
        principal: Principal,
        *,
        page_size: int,
        page_token: str,
        agent_id: str = "",
        user_id: str = "",
        status: str = "",
        start_time: int = 0,
        end_time: int = 0,
    ) -> Page[Conversation]:
        if start_time and end_time and end_time <= start_time:
            raise errors.InvalidArgument.field("end_time", "must be after start_time")
        tenant_id, only_user = principal.tenant_id, self.only_user(principal)

        async def fetch(after: tuple[int, str] | None, limit: int) -> list[Conversation]:
            # A member's user filter narrows their own scope: another user's id simply matches nothing.
            return await self.store.list_conversations(
                tenant_id,
                only_user,
                agent_id=agent_id,
                user_id=user_id,
                status=status,
                start_time=start_time,
                end_time=end_time,
                after=after,
                limit=limit,
            )

        return await paginate(
            self.page_tokens,
            ("conv.list", tenant_id, only_user, agent_id, user_id, status, start_time, end_time),
            page_size=page_size,
            page_token=page_token,
            parse=keyset,
            fetch=fetch,
            cursor_of=lambda c: [c.create_time, c.id],
        )

    async def update_conversation(
        self,
        principal: Principal,
        conversation_id: str,
        *,
        paths: list[str],
        title: str,
        metadata: dict[str, str],
    ) -> Conversation:
        """Replaces the fields named by `paths` ("title", "metadata", "*"); a closed conversation can
        still be renamed (a label is not a message)."""
        require_id(conversation_id, "conversation.id")
        # Who may not see it learns nothing else, whatever the mask says.
        await self._visible(principal, conversation_id)
        fields = update_paths(paths, ("title", "metadata"))
        v = Violations()
        if "title" in fields:
            v.check(len(title) <= validation.MAX_TITLE_CHARS, "conversation.title", "is too long")
        if "metadata" in fields:
            validation.metadata(v, "conversation.metadata", metadata)
        v.raise_if_any()
        values: dict[str, Any] = {"title": title, "metadata": dict(metadata)}
        conversation = await self.store.update_conversation(
            principal.tenant_id,
            self.only_user(principal),
            conversation_id,
            {f: values[f] for f in fields},
            now=self._now(),
        )
        if conversation is None:
            raise _not_found(conversation_id)
        return conversation

    async def close_conversation(self, principal: Principal, conversation_id: str) -> Conversation:
        require_id(conversation_id, "conversation_id")
        conversation = await self.store.close_conversation(
            principal.tenant_id, self.only_user(principal), conversation_id, now=self._now()
        )
        if conversation is None:
            raise _not_found(conversation_id)
        return conversation

    async def delete_conversation(self, principal: Principal, conversation_id: str) -> None:
        conversation = await self._visible(principal, conversation_id)
        await self.store.delete_conversations([conversation.id])
        await self.hot.drop(conversation.id)

    # -- messages ------------------------------------------------------------------------------

    async def append_message(
        self, principal: Principal, conversation_id: str, new: NewMessage, *, request_id: str = ""
    ) -> tuple[Message, Conversation]:
        v = Violations()
        v.check(bool(conversation_id), "conversation_id", "is required")
        validation.message(
            v,
            role=new.role,
            content=new.content,
            tool_call_id=new.tool_call_id,
            meta=new.metadata,
            tool_calls=new.tool_calls,
        )
        validation.usage(v, role=new.role, usage=new.usage)
        v.request_id(request_id)
        v.raise_if_any()
        outcome = await self.store.append_message(
            principal.tenant_id,
            self.only_user(principal),
            conversation_id,
            new,
            # A call's name and arguments are what the model reads back of it.
            token_count=self.counter.count(
                " ".join([new.content, *(f"{c.name} {c.arguments_json}" for c in new.tool_calls)])
            ),
            request_id=request_id,
            now=self._now(),
        )
        if outcome is AppendRefused.MISSING:
            raise _not_found(conversation_id)
        if outcome is AppendRefused.CLOSED:
            raise _closed(conversation_id)
        if not outcome.replayed:
            # After the commit, and never able to fail the append: Redis only makes reads fast.
            await self.hot.append(outcome.message)
            usage = outcome.message.usage
            if usage is not None:
                self.meter.record(
                    tier=principal.tier,
                    model=usage.model,
                    prompt_tokens=usage.prompt_tokens,
                    completion_tokens=usage.completion_tokens,
                    cost_micros=usage.cost_micros,
                )
        return outcome.message, outcome.conversation

    async def list_messages(
        self,
        principal: Principal,
        conversation_id: str,
        *,
        page_size: int,
        page_token: str,
        before_sequence: int = 0,
        after_sequence: int = 0,
        descending: bool = False,
        branch_message_id: str = "",
    ) -> tuple[Page[Message], dict[str, Siblings]]:
        """A page of the active path (or of the branch through `branch_message_id`), with the
        siblings of each message on it by parent id."""
        v = Violations()
        v.check(before_sequence >= 0, "before_sequence", "must not be negative")
        v.check(after_sequence >= 0, "after_sequence", "must not be negative")
        if branch_message_id:
            v.id(branch_message_id, "branch_message_id")
        v.raise_if_any()
        conversation = await self._visible(principal, conversation_id)
        branch: list[Message] | None = None
        if branch_message_id:
            branch = await self.store.path_through(conversation.id, branch_message_id)
            if branch is None:
                raise _message_not_found(branch_message_id)

        async def fetch(cursor: int | None, limit: int) -> list[Message]:
            after, before = after_sequence, before_sequence
            if cursor is not None:
                if descending:
                    before = cursor
                else:
                    after = cursor
            if branch is not None:
                # A branch other than the active one is walked (its length, not the tree's).
                chosen = [m for m in branch if m.sequence > after and (not before or m.sequence < before)]
                return (chosen[::-1] if descending else chosen)[:limit]
            return await self.store.list_messages(
                conversation.id, after=after, before=before, descending=descending, limit=limit
            )

        page = await paginate(
            self.page_tokens,
            ("msg.list", conversation.id, before_sequence, after_sequence, descending, branch_message_id),
            page_size=page_size,
            page_token=page_token,
            parse=position,
            fetch=fetch,
            cursor_of=lambda m: m.sequence,
        )
        siblings = await self.store.siblings(conversation.id, [m.parent_id for m in page.items])
        return page, siblings

    async def get_message(
        self, principal: Principal, conversation_id: str, message_id: str
    ) -> tuple[Message, Siblings]:
        require_id(message_id, "message_id")
        conversation = await self._visible(principal, conversation_id)
        message = await self.store.get_message(conversation.id, message_id)
        if message is None:
            raise _message_not_found(message_id)
        siblings = await self.store.siblings(conversation.id, [message.parent_id])
        return message, siblings.get(message.parent_id, Siblings((message.id,)))

    async def edit_message(
        self,
        principal: Principal,
        conversation_id: str,
        message_id: str,
        *,
        content: str,
        metadata: dict[str, str],
        request_id: str = "",
    ) -> tuple[Message, Conversation]:
        """A new version of a user message: its sibling with `content`, now the active leaf."""
        v = Violations()
        v.id(conversation_id, "conversation_id")
        v.id(message_id, "message_id")
        v.check(bool(content.strip()), "content", "must not be blank")
        validation.message(v, role="user", content=content, tool_call_id="", meta=metadata, tool_calls=())
        v.request_id(request_id)
        v.raise_if_any()
        outcome = await self.store.edit_message(
            principal.tenant_id,
            self.only_user(principal),
            conversation_id,
            message_id,
            NewMessage(role="user", content=content, metadata=dict(metadata)),
            token_count=self.counter.count(content),
            request_id=request_id,
            now=self._now(),
        )
        if outcome is BranchRefused.MISSING:
            raise _not_found(conversation_id)
        if outcome is BranchRefused.NO_MESSAGE:
            raise _message_not_found(message_id)
        if outcome is BranchRefused.CLOSED:
            raise _closed(conversation_id)
        if outcome is BranchRefused.NOT_USER:
            raise errors.InvalidArgument.field(
                "message_id", "must name a user message (an answer is regenerated, not edited)"
            )
        # The hot window holds the old path's newest messages: rebuilt on the next read.
        await self.hot.drop(conversation_id)
        return outcome.message, outcome.conversation

    async def switch_branch(
        self, principal: Principal, conversation_id: str, message_id: str, *, exact: bool = False
    ) -> Conversation:
        v = Violations()
        v.id(conversation_id, "conversation_id")
        v.id(message_id, "message_id")
        v.raise_if_any()
        outcome = await self.store.switch_branch(
            principal.tenant_id,
            self.only_user(principal),
            conversation_id,
            message_id,
            exact=exact,
            now=self._now(),
        )
        if outcome is BranchRefused.MISSING:
            raise _not_found(conversation_id)
        if isinstance(outcome, BranchRefused):
            raise _message_not_found(message_id)
        await self.hot.drop(conversation_id)
        return outcome

    # -- context -------------------------------------------------------------------------------

    async def get_context(
        self, principal: Principal, conversation_id: str, *, token_budget: int, system_prompt: str
    ) -> ContextWindow:
        v = Violations()
        v.check(token_budget > 0, "token_budget", "must be positive")
        v.check(
            len(system_prompt.encode()) <= validation.MAX_SYSTEM_PROMPT_BYTES,
            "system_prompt",
            f"must be at most {validation.MAX_SYSTEM_PROMPT_BYTES} bytes",
        )
        v.raise_if_any()
        budget = min(token_budget, tiers.limits_for(principal.tier).max_context_tokens)
        conversation = await self._visible(principal, conversation_id)
        builder = WindowBuilder(budget=budget, counter=self.counter, system_prompt=system_prompt)
        history = self.history(conversation)
        try:
            async for message in history:
                if not builder.feed(message):
                    break
        finally:
            await history.aclose()
        return builder.result(last_sequence=conversation.path_length, conversation_id=conversation.id)

    async def history(self, conversation: Conversation) -> AsyncGenerator[Message]:
        """The active path's messages newest first, read lazily: the hot window, then PostgreSQL in
        bounded pages. The consumer stops when its budget is full, so the cost follows the budget,
        not the length of the history. A hot entry counts only where it continues the path (its id
        is the parent the previous one named): an entry of another branch rebuilds the window."""
        next_seq = conversation.path_length
        expected = conversation.active_leaf_id
        from_hot = 0
        window_broken = False
        while next_seq >= 1 and from_hot < self.hot.size:
            want = min(self.hot_page, self.hot.size - from_hot, next_seq)
            page = await self.hot.read(conversation.id, max_sequence=next_seq, count=want)
            if page is None:  # Redis is down: PostgreSQL alone
                break
            good = 0
            for message in page:
                if message.sequence != next_seq or message.id != expected:
                    break
                good += 1
                next_seq -= 1
                expected = message.parent_id
                yield message
            from_hot += good
            if good < want:
                window_broken = True
                break
        if window_broken:
            # Missing (new, flushed, evicted) or holed: rebuild from PostgreSQL and serve from that.
            newest = await self.store.messages_before(
                conversation.id, conversation.path_length + 1, limit=self.hot.size
            )
            await self.hot.fill(conversation.id, newest)
            for message in newest:
                if message.sequence <= next_seq:
                    next_seq = message.sequence - 1
                    yield message
        while next_seq >= 1:
            page = await self.store.messages_before(conversation.id, next_seq + 1, limit=self.db_page)
            if not page:
                return
            for message in page:
                next_seq = message.sequence - 1
                yield message

    # -- search and stats ----------------------------------------------------------------------

    async def search(
        self, principal: Principal, query: str, *, page_size: int, page_token: str, agent_id: str = ""
    ) -> Page[SearchHit]:
        v = Violations()
        v.check(bool(query.strip()), "query", "is required")
        v.check(
            len(query) <= validation.MAX_QUERY_CHARS,
            "query",
            f"must be at most {validation.MAX_QUERY_CHARS} characters",
        )
        v.raise_if_any()
        tenant_id, only_user = principal.tenant_id, self.only_user(principal)

        async def fetch(after: list[Any] | None, limit: int) -> list[tuple[SearchHit, list[Any]]]:
            return await self.search_index.search(
                tenant_id, only_user, query, agent_id=agent_id, after=after, limit=limit
            )

        page = await paginate(
            self.page_tokens,
            ("conv.search", tenant_id, only_user, agent_id, query),
            page_size=page_size,
            page_token=page_token,
            parse=_search_cursor,
            fetch=fetch,
            cursor_of=lambda pair: pair[1],
            maximum=SEARCH_MAX_PAGE_SIZE,
        )
        return Page([hit for hit, _ in page.items], page.next_page_token)

    async def tenant_stats(self, principal: Principal, *, start_time: int, end_time: int) -> TenantStats:
        if start_time and end_time and end_time <= start_time:
            raise errors.InvalidArgument.field("end_time", "must be after start_time")
        return await self.search_index.stats(
            principal.tenant_id, self.only_user(principal), start_time=start_time, end_time=end_time
        )

    # -- retention policy ----------------------------------------------------------------------

    async def get_retention_policy(self, principal: Principal) -> int:
        principal.require_admin()
        return await self.store.get_retention_days(principal.tenant_id)

    async def update_retention_policy(self, principal: Principal, days: int) -> int:
        principal.require_admin()
        if not 0 <= days <= validation.MAX_RETENTION_DAYS:
            raise errors.InvalidArgument.field(
                "policy.closed_retention_days", f"must be 0 (keep forever) to {validation.MAX_RETENTION_DAYS}"
            )
        await self.store.set_retention_days(principal.tenant_id, days, now=self._now())
        return days

    # -- usage, quotas, prices ------------------------------------------------------------------

    async def get_usage(
        self,
        principal: Principal,
        *,
        start_time: int = 0,
        end_time: int = 0,
        user_id: str = "",
        agent_id: str = "",
        model: str = "",
        group_by: Sequence[str] = (),
        tenant: str = "",
        tier: str = "",
    ) -> Usage:
        """Usage summed over whole UTC days in [start_time, end_time) (default: this UTC month),
        with the tenant's quota. Another `tenant` (with its `tier`) is the operator's alone."""
        if tenant and tenant != principal.tenant_id:
            principal.require_operator()
        tenant_id = tenant or principal.tenant_id
        month, next_month = month_bounds(self._now())
        start, end = start_time or month, end_time or next_month
        v = Violations()
        v.check(start % DAY_US == 0, "start_time", "must be a UTC midnight (usage is kept per UTC day)")
        v.check(end % DAY_US == 0, "end_time", "must be a UTC midnight (usage is kept per UTC day)")
        v.check(end > start, "end_time", "must be after start_time")
        for i, key in enumerate(group_by):
            if key not in GROUPINGS:
                v.add(f"group_by[{i}]", f"must be one of {', '.join(g.upper() for g in GROUPINGS)}")
            elif key in group_by[:i]:
                v.add(f"group_by[{i}]", f"{key.upper()} is given twice")
        v.raise_if_any()
        # A member's user filter narrows their own scope: another user's id matches nothing.
        member = principal.tenant_id == tenant_id and not principal.is_admin
        others = member and user_id not in ("", principal.user_id)
        # Sorted by the contract's key order, whatever order the caller named them in.
        keys = [g for g in GROUPINGS if g in group_by] if group_by else list(GROUPINGS)
        rows = (
            []
            if others
            else await self.store.usage_rows(
                tenant_id,
                start_day=start,
                end_day=end,
                user_id=principal.user_id if member else user_id,
                agent_id=agent_id,
                model=model,
                group_by=keys,
            )
        )
        return Usage(totals=_sum(rows), rows=rows, quota=await self._quota(tenant_id, tier or principal.tier))

    async def check_quota(self, principal: Principal) -> Quota:
        """The quota while some remains; RESOURCE_EXHAUSTED naming the used-up limit and when it resets."""
        quota = await self._quota(principal.tenant_id, principal.tier)
        limit = quota.exhausted()
        if limit:
            reset = iso_time(quota.reset_time)
            raise errors.ResourceExhausted(
                f"the tenant's {limit.replace('_', ' ')} quota is used up; it resets at {reset}",
                retry_after=(quota.reset_time - self._now()) / 1_000_000,
                violations=[Violation(limit, f"used up this UTC month; resets at {reset}")],
                reason="MONTHLY_QUOTA_EXHAUSTED",
                metadata={"quota": limit, "reset_time": reset},
            )
        return quota

    async def _quota(self, tenant_id: str, tier: str) -> Quota:
        month, next_month = month_bounds(self._now())
        own = await self.store.get_quota_limit(tenant_id)
        limit = own or QuotaLimit(tokens=tiers.limits_for(tier).monthly_tokens)
        tokens, cost = await self.store.used_since(tenant_id, month)
        return Quota(
            limit_tokens=limit.tokens,
            used_tokens=tokens,
            limit_cost_micros=limit.cost_micros,
            used_cost_micros=cost,
            reset_time=next_month,
        )

    async def set_quota(self, principal: Principal, tenant_id: str, limit: QuotaLimit) -> QuotaLimit:
        principal.require_operator()
        v = Violations()
        v.id(tenant_id, "tenant")
        v.check(limit.tokens >= 0, "tokens", "must not be negative (0: unlimited)")
        v.check(limit.cost_micros >= 0, "cost", "must not be negative (0: unlimited)")
        v.raise_if_any()
        await self.store.set_quota_limit(tenant_id, limit, now=self._now())
        return limit

    async def set_price(
        self, principal: Principal, model: str, *, input_micros: int, output_micros: int
    ) -> Price:
        """From now on: messages already stored keep the cost they were given."""
        principal.require_operator()
        v = Violations()
        validation.model(v, "model", model)
        v.check(input_micros >= 0, "input", "must not be negative")
        v.check(output_micros >= 0, "output", "must not be negative")
        v.raise_if_any()
        price = Price(
            model=model, input_micros=input_micros, output_micros=output_micros, update_time=self._now()
        )
        await self.store.set_price(price)
        return price

    async def list_prices(self, principal: Principal) -> list[Price]:
        principal.require_operator()
        return await self.store.list_prices()


def month_bounds(us: int) -> tuple[int, int]:
    """The UTC month `us` falls in: its first microsecond and the next month's (quotas reset there)."""
    now = datetime.datetime.fromtimestamp(us / 1_000_000, datetime.UTC)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = (start + datetime.timedelta(days=32)).replace(day=1)
    return _us(start), _us(following)


def _us(moment: datetime.datetime) -> int:
    return int(moment.timestamp()) * 1_000_000


def iso_time(us: int) -> str:
    return datetime.datetime.fromtimestamp(us // 1_000_000, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sum(rows: Sequence[UsageRow]) -> UsageRow:
    return UsageRow(
        messages=sum(r.messages for r in rows),
        prompt_tokens=sum(r.prompt_tokens for r in rows),
        completion_tokens=sum(r.completion_tokens for r in rows),
        total_tokens=sum(r.total_tokens for r in rows),
        tool_calls=sum(r.tool_calls for r in rows),
        cost_micros=sum(r.cost_micros for r in rows),
    )


def _search_cursor(cursor: Any) -> list[Any]:
    """(score, id) on PostgreSQL, (create_time, id) on SQLite: the search index reads either."""
    if isinstance(cursor, list) and len(cursor) == 2 and isinstance(cursor[1], str):
        return cursor
    raise ValueError("not a search cursor")
