"""The tables the conversation service owns (SQLAlchemy Core). The migrations in migrations/ create
them; this module only describes them for queries.

Times are BIGINT microseconds since the Unix epoch (UTC): the same integer arithmetic gives keyset
cursors and UTC day buckets on PostgreSQL and SQLite alike.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

conversations = sa.Table(
    "conversations",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("tenant_id", sa.String(128), nullable=False),
    sa.Column("user_id", sa.String(128), nullable=False),
    sa.Column("agent_id", sa.String(128), nullable=False),
    sa.Column("agent_version", sa.BigInteger, nullable=False),
    sa.Column("title", sa.String(512), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("metadata", sa.JSON, nullable=False),
    sa.Column("message_count", sa.BigInteger, nullable=False),
    sa.Column("token_count", sa.BigInteger, nullable=False),
    sa.Column("request_id", sa.String(128), nullable=False),
    sa.Column("create_time", sa.BigInteger, nullable=False),
    sa.Column("update_time", sa.BigInteger, nullable=False),
    sa.Column("last_message_time", sa.BigInteger, nullable=False),
    sa.Column("close_time", sa.BigInteger, nullable=False),
    # The leaf of the active path ("" while empty) and its sequence (the path's length).
    sa.Column("active_leaf_id", sa.String(36), nullable=False),
    sa.Column("path_length", sa.BigInteger, nullable=False),
)

messages = sa.Table(
    "messages",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("conversation_id", sa.String(36), nullable=False),
    sa.Column("tenant_id", sa.String(128), nullable=False),
    sa.Column("sequence", sa.BigInteger, nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("content", sa.Text, nullable=False),
    sa.Column("token_count", sa.Integer, nullable=False),
    sa.Column("metadata", sa.JSON, nullable=False),
    sa.Column("tool_call_id", sa.String(128), nullable=False),
    sa.Column("request_id", sa.String(128), nullable=False),
    sa.Column("create_time", sa.BigInteger, nullable=False),
    sa.Column("usage", sa.JSON, nullable=True),
    # An assistant message's tool calls ([{id, name, arguments_json}]); NULL on every other message.
    sa.Column("tool_calls", sa.JSON, nullable=True),
    # The message it follows ("" for a first message); whether it is on the active path.
    sa.Column("parent_id", sa.String(36), nullable=False),
    sa.Column("on_path", sa.Boolean, nullable=False),
)

# Keyed by (tenant_id, day, user_id, agent_id, model); `day` is the UTC midnight in microseconds.
usage_daily = sa.Table(
    "usage_daily",
    metadata,
    sa.Column("tenant_id", sa.String(128), primary_key=True),
    sa.Column("day", sa.BigInteger, primary_key=True),
    sa.Column("user_id", sa.String(128), primary_key=True),
    sa.Column("agent_id", sa.String(128), primary_key=True),
    sa.Column("model", sa.String(256), primary_key=True),
    sa.Column("messages", sa.BigInteger, nullable=False),
    sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
    sa.Column("completion_tokens", sa.BigInteger, nullable=False),
    sa.Column("total_tokens", sa.BigInteger, nullable=False),
    sa.Column("tool_calls", sa.BigInteger, nullable=False),
    sa.Column("cost_micros", sa.BigInteger, nullable=False),
)

# Micro-units of the price currency per million tokens.
model_prices = sa.Table(
    "model_prices",
    metadata,
    sa.Column("model", sa.String(256), primary_key=True),
    sa.Column("input_micros", sa.BigInteger, nullable=False),
    sa.Column("output_micros", sa.BigInteger, nullable=False),
    sa.Column("update_time", sa.BigInteger, nullable=False),
)

tenant_quotas = sa.Table(
    "tenant_quotas",
    metadata,
    sa.Column("tenant_id", sa.String(128), primary_key=True),
    sa.Column("limit_tokens", sa.BigInteger, nullable=False),
    sa.Column("limit_cost_micros", sa.BigInteger, nullable=False),
    sa.Column("update_time", sa.BigInteger, nullable=False),
)

retention_policies = sa.Table(
    "retention_policies",
    metadata,
    sa.Column("tenant_id", sa.String(128), primary_key=True),
    sa.Column("closed_retention_days", sa.Integer, nullable=False),
    sa.Column("update_time", sa.BigInteger, nullable=False),
)
