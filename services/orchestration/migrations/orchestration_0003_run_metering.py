"""orchestration: what a run used and which model answered (issue 16)

runs gains the model that answered, where its token counts come from, its tool calls and model
time, the models that failed before it (JSON list of {model, reason}) and the model the message
asked for. Old runs keep empty values.

Revision ID: orchestration_0003
Revises: orchestration_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "orchestration_0003"
down_revision = "orchestration_0002"
branch_labels = None
depends_on = None

COLUMNS = [
    sa.Column("model", sa.String(128), nullable=True),
    sa.Column("usage_source", sa.String(16), nullable=True),
    sa.Column("tool_calls", sa.Integer, nullable=True),
    sa.Column("duration_ms", sa.BigInteger, nullable=True),
    sa.Column("fallbacks", sa.Text, nullable=True),
    sa.Column("model_override", sa.String(128), nullable=True),
]


def upgrade() -> None:
    for column in COLUMNS:
        op.add_column("runs", column.copy())


def downgrade() -> None:
    for column in reversed(COLUMNS):
        op.drop_column("runs", column.name)
