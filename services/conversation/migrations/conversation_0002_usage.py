"""conversation: message usage, daily usage aggregates, model prices, tenant quotas

Revision ID: conversation_0002
Revises: conversation_0001
Create Date: 2025-06-01
"""

import sqlalchemy as sa
from alembic import op

revision = "conversation_0002"
down_revision = "conversation_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL on every message that carries no usage (all but assistant answers).
    op.add_column("messages", sa.Column("usage", sa.JSON, nullable=True))
    # One row per (tenant, UTC day, user, agent, model): appends add to it in their own statement,
    # so GetUsage and the quota check read a few rows, not the messages.
    op.create_table(
        "usage_daily",
        sa.Column("tenant_id", sa.String(128), nullable=False),
        sa.Column("day", sa.BigInteger, nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("agent_id", sa.String(128), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("messages", sa.BigInteger, nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger, nullable=False),
        sa.Column("completion_tokens", sa.BigInteger, nullable=False),
        sa.Column("total_tokens", sa.BigInteger, nullable=False),
        sa.Column("tool_calls", sa.BigInteger, nullable=False),
        sa.Column("cost_micros", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "day", "user_id", "agent_id", "model"),
    )
    op.create_table(
        "model_prices",
        sa.Column("model", sa.String(256), primary_key=True),
        sa.Column("input_micros", sa.BigInteger, nullable=False),
        sa.Column("output_micros", sa.BigInteger, nullable=False),
        sa.Column("update_time", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "tenant_quotas",
        sa.Column("tenant_id", sa.String(128), primary_key=True),
        sa.Column("limit_tokens", sa.BigInteger, nullable=False),
        sa.Column("limit_cost_micros", sa.BigInteger, nullable=False),
        sa.Column("update_time", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("tenant_quotas")
    op.drop_table("model_prices")
    op.drop_table("usage_daily")
    op.drop_column("messages", "usage")
