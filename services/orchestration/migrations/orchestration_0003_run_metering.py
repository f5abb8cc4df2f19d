"""orchestration: what a run used and which model answered (issue 16)

runs gains the model that answered, where its token counts come from, its tool calls and model
time, the models that failed before it (JSON list of {model, reason}) and the model the message
asked for. Old runs keep empty values.

Revision ID: orchestration_0003
Revises: orchestration_0002
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "orchestration_0003"
down_revision = "orchestration_0002"
branch_labels = None
depends_on = None

COLUMNS: list[tuple[str, sa.types.TypeEngine[Any]]] = [
    ("model", sa.String(128)),
    ("usage_source", sa.String(16)),
    ("tool_calls", sa.Integer()),
    ("duration_ms", sa.BigInteger()),
    ("fallbacks", sa.Text()),
    ("model_override", sa.String(128)),
]


def upgrade() -> None:
    for name, type_ in COLUMNS:
        op.add_column("runs", sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    for name, _ in reversed(COLUMNS):
        op.drop_column("runs", name)
