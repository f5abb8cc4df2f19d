"""orchestration: runs.response_format, the message's answer format kept with its run

A message's response_format applies to its whole run; a run that waits for tool outputs is resumed
by whichever instance receives the last answer, so the format has to be in the row, not in the
admitting instance's memory. JSON text ({"json", "schema", "name"}); NULL: the agent's format.

Revision ID: orchestration_0006
Revises: orchestration_0005
"""

import sqlalchemy as sa
from alembic import op

revision = "orchestration_0006"
down_revision = "orchestration_0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("response_format", sa.Text, nullable=True))


def downgrade() -> None:
    op.drop_column("runs", "response_format")
