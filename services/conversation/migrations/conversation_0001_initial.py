"""conversation: conversations, messages, retention policies

Revision ID: conversation_0001
Revises:
Create Date: 2025-01-01
"""

import sqlalchemy as sa
from alembic import op

revision = "conversation_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "conversations",
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
    )
    # Keyset listing, newest first, for the tenant (admins) and for one user (members).
    op.create_index("ix_conversations_tenant_time", "conversations", ["tenant_id", "create_time", "id"])
    op.create_index(
        "ix_conversations_tenant_user_time", "conversations", ["tenant_id", "user_id", "create_time", "id"]
    )
    op.create_index("ix_conversations_retention", "conversations", ["tenant_id", "status", "close_time"])
    op.create_index(
        "uq_conversations_request_id",
        "conversations",
        ["tenant_id", "user_id", "request_id"],
        unique=True,
        postgresql_where=sa.text("request_id <> ''"),
        sqlite_where=sa.text("request_id <> ''"),
    )

    op.create_table(
        "messages",
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
        sa.UniqueConstraint("conversation_id", "sequence", name="uq_messages_sequence"),
    )
    op.create_index(
        "uq_messages_request_id",
        "messages",
        ["conversation_id", "request_id"],
        unique=True,
        postgresql_where=sa.text("request_id <> ''"),
        sqlite_where=sa.text("request_id <> ''"),
    )
    op.create_index("ix_messages_tenant_time", "messages", ["tenant_id", "create_time"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE INDEX ix_messages_content_fts ON messages USING GIN (to_tsvector('simple', content))"
        )

    op.create_table(
        "retention_policies",
        sa.Column("tenant_id", sa.String(128), primary_key=True),
        sa.Column("closed_retention_days", sa.Integer, nullable=False),
        sa.Column("update_time", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("retention_policies")
    op.drop_table("messages")
    op.drop_table("conversations")
