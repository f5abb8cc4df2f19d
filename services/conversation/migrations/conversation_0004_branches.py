"""conversation: messages form a tree (parent, active path); a conversation has an active leaf

Revision ID: conversation_0004
Revises: conversation_0003
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "conversation_0004"
down_revision = "conversation_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("parent_id", sa.String(36), nullable=False, server_default=""))
    # Whether the message is on its conversation's active path: what ListMessages, the context
    # window, search and stats read without walking the tree.
    op.add_column("messages", sa.Column("on_path", sa.Boolean, nullable=False, server_default=sa.true()))
    op.add_column(
        "conversations", sa.Column("active_leaf_id", sa.String(36), nullable=False, server_default="")
    )
    op.add_column(
        "conversations", sa.Column("path_length", sa.BigInteger, nullable=False, server_default="0")
    )
    # Existing conversations are one path: each message follows the one before it, the newest is
    # the leaf.
    op.execute(
        """
        UPDATE messages SET parent_id = COALESCE((
            SELECT p.id FROM messages p
            WHERE p.conversation_id = messages.conversation_id AND p.sequence = messages.sequence - 1
        ), '')
        """
    )
    op.execute(
        """
        UPDATE conversations SET path_length = message_count, active_leaf_id = COALESCE((
            SELECT m.id FROM messages m
            WHERE m.conversation_id = conversations.id AND m.sequence = conversations.message_count
        ), '')
        """
    )
    # Siblings share a sequence number (their depth): unique on the active path only.
    with op.batch_alter_table("messages") as batch:
        batch.drop_constraint("uq_messages_sequence", type_="unique")
    op.create_index(
        "uq_messages_path_sequence",
        "messages",
        ["conversation_id", "sequence"],
        unique=True,
        postgresql_where=sa.text("on_path"),
        sqlite_where=sa.text("on_path"),
    )
    op.create_index("ix_messages_parent", "messages", ["conversation_id", "parent_id"])


def downgrade() -> None:
    op.drop_index("ix_messages_parent", "messages")
    op.drop_index("uq_messages_path_sequence", "messages")
    # Only the active path fits the old one-path schema.
    op.execute("DELETE FROM messages WHERE NOT on_path")
    with op.batch_alter_table("messages") as batch:
        batch.create_unique_constraint("uq_messages_sequence", ["conversation_id", "sequence"])
    op.drop_column("conversations", "path_length")
    op.drop_column("conversations", "active_leaf_id")
    op.drop_column("messages", "on_path")
    op.drop_column("messages", "parent_id")
