"""orchestration: times as int microseconds (*_us BIGINT), the platform's one time representation

Each float-seconds column becomes a BIGINT column of microseconds with its data; the keyset
indexes move to the new columns.

Revision ID: orchestration_0002
Revises: orchestration_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "orchestration_0002"
down_revision = "orchestration_0001"
branch_labels = None
depends_on = None

# (table, column, required)
COLUMNS = [
    ("sessions", "create_time", True),
    ("sessions", "update_time", True),
    ("sessions", "end_time", False),
    ("runs", "create_time", True),
    ("runs", "start_time", False),
    ("runs", "end_time", False),
]
INDEXES = [
    ("ix_sessions_tenant_created", "sessions", "tenant_id"),
    ("ix_runs_session_created", "runs", "session_id"),
]


def upgrade() -> None:
    # Columns are added and dropped in place (SQLite 3.35+ does both): recreating `sessions` the
    # batch way would trip the foreign key from `runs`, which SQLite cannot switch off inside the
    # migration's transaction.
    for name, table, _ in INDEXES:
        op.drop_index(name, table)
    for table, column, required in COLUMNS:
        # A required column comes with a default so existing rows satisfy NOT NULL until filled.
        op.add_column(
            table,
            sa.Column(
                f"{column}_us", sa.BigInteger, nullable=not required, server_default="0" if required else None
            ),
        )
        op.execute(f"UPDATE {table} SET {column}_us = CAST(ROUND({column} * 1000000) AS BIGINT)")
        if required and op.get_bind().dialect.name != "sqlite":
            # SQLite cannot drop a default in place; there it stays, unused (the store writes every time).
            op.alter_column(table, f"{column}_us", server_default=None)
        op.drop_column(table, column)
    for name, table, key in INDEXES:
        op.create_index(name, table, [key, "create_time_us", "id"])


def downgrade() -> None:
    for name, table, _ in INDEXES:
        op.drop_index(name, table)
    for table, column, required in COLUMNS:
        op.add_column(
            table,
            sa.Column(
                column,
                sa.Float(precision=53),
                nullable=not required,
                server_default="0" if required else None,
            ),
        )
        op.execute(f"UPDATE {table} SET {column} = {column}_us / 1000000.0")
        if required and op.get_bind().dialect.name != "sqlite":
            op.alter_column(table, column, server_default=None)
        op.drop_column(table, f"{column}_us")
    for name, table, key in INDEXES:
        op.create_index(name, table, [key, "create_time", "id"])
