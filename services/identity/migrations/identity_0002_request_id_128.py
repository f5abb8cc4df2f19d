"""identity: request ids up to 128 characters, the platform's one limit (services/platform/validation.py)

Revision ID: identity_0002
Revises: identity_0001
Create Date: 2025-06-01
"""

import sqlalchemy as sa
from alembic import op

revision = "identity_0002"
down_revision = "identity_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Batch mode: SQLite (the embedded mode) cannot alter a column in place.
    with op.batch_alter_table("identity_request_ids") as batch:
        batch.alter_column("request_id", existing_type=sa.String(100), type_=sa.String(128))


def downgrade() -> None:
    with op.batch_alter_table("identity_request_ids") as batch:
        batch.alter_column("request_id", existing_type=sa.String(128), type_=sa.String(100))
