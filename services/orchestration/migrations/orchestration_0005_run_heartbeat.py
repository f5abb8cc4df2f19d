"""orchestration: runs.heartbeat_us, the owner's sign of life beside the Redis lease

The owning instance writes it for all its queued and running runs on every lease renewal; the
sweeper fails a run whose lease is gone only when this is stale too, so Redis losing its keys does
not fail live runs. NULL: written before this revision, or not yet beaten (stale).

Revision ID: orchestration_0005
Revises: orchestration_0004
"""

import sqlalchemy as sa
from alembic import op

revision = "orchestration_0005"
down_revision = "orchestration_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("heartbeat_us", sa.BigInteger, nullable=True))


def downgrade() -> None:
    op.drop_column("runs", "heartbeat_us")
