"""sessions and runs

Revision ID: orchestration_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "orchestration_0001"
down_revision = None
branch_labels = ("orchestration",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("agent_id", sa.String(64), nullable=False),
        sa.Column("agent_version", sa.BigInteger, nullable=False),
        sa.Column("conversation_id", sa.String(64), nullable=False),
        sa.Column("title", sa.String(256), nullable=False, server_default=""),
        sa.Column("state", sa.SmallInteger, nullable=False),
        sa.Column("active_run_id", sa.String(36), nullable=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("create_time", sa.Float(precision=53), nullable=False),
        sa.Column("update_time", sa.Float(precision=53), nullable=False),
        sa.Column("end_time", sa.Float(precision=53), nullable=True),
        sa.UniqueConstraint("tenant_id", "user_id", "request_id", name="uq_sessions_request"),
    )
    op.create_index("ix_sessions_tenant_created", "sessions", ["tenant_id", "create_time", "id"])
    op.create_table(
        "runs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(36), sa.ForeignKey("sessions.id"), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("state", sa.SmallInteger, nullable=False),
        sa.Column("agent_version", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("input_text", sa.Text, nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("user_message_id", sa.String(64), nullable=False, server_default=""),
        sa.Column("assistant_message_id", sa.String(64), nullable=False, server_default=""),
        sa.Column("prompt_tokens", sa.Integer, nullable=False, server_default="0"),
        sa.Column("completion_tokens", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
        sa.Column("last_event_id", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("create_time", sa.Float(precision=53), nullable=False),
        sa.Column("start_time", sa.Float(precision=53), nullable=True),
        sa.Column("end_time", sa.Float(precision=53), nullable=True),
        sa.UniqueConstraint("session_id", "request_id", name="uq_runs_request"),
    )
    op.create_index("ix_runs_session_created", "runs", ["session_id", "create_time", "id"])
    op.create_index("ix_runs_state", "runs", ["state"])


def downgrade() -> None:
    op.drop_index("ix_runs_state", "runs")
    op.drop_index("ix_runs_session_created", "runs")
    op.drop_table("runs")
    op.drop_index("ix_sessions_tenant_created", "sessions")
    op.drop_table("sessions")
