"""conversation: an assistant message's tool calls

Revision ID: conversation_0003
Revises: conversation_0002
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "conversation_0003"
down_revision = "conversation_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # [{id, name, arguments_json}] on an assistant message that calls tools; NULL on all others.
    op.add_column("messages", sa.Column("tool_calls", sa.JSON, nullable=True))


def downgrade() -> None:
    op.drop_column("messages", "tool_calls")
