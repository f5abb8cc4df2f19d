"""orchestration: runs that wait (tool calls, wait expiry, steps) and the tenants' tool signing secrets

A run waiting for a client's tool outputs or a person's approval is only rows: its state, its
wait_expire_us and its step's calls in tool_calls. Any instance answers them and continues the run.

Revision ID: orchestration_0004
Revises: orchestration_0003
"""

import sqlalchemy as sa
from alembic import op

revision = "orchestration_0004"
down_revision = "orchestration_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("steps", sa.Integer, nullable=False, server_default="0"))
    op.add_column("runs", sa.Column("wait_expire_us", sa.BigInteger, nullable=True))
    # The expiry sweep reads only waiting runs past their expiry.
    op.create_index("ix_runs_wait_expire", "runs", ["wait_expire_us"])
    op.create_table(
        "tool_calls",
        sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("call_id", sa.String(128), primary_key=True),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("arguments_json", sa.Text, nullable=False),
        sa.Column("execution", sa.String(16), nullable=False),
        sa.Column("requires_approval", sa.Boolean, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("output", sa.Text, nullable=False, server_default=""),
        sa.Column("is_error", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("duration_ms", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("create_time_us", sa.BigInteger, nullable=False),
        sa.Column("update_time_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "tool_secrets",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("rotated_us", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("tool_secrets")
    op.drop_table("tool_calls")
    op.drop_index("ix_runs_wait_expire", "runs")
    op.drop_column("runs", "wait_expire_us")
    op.drop_column("runs", "steps")
