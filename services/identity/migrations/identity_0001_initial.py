"""identity: tenants, users, refresh tokens, request ids

Revision ID: identity_0001
Revises:
Create Date: 2025-01-01
"""

import sqlalchemy as sa
from alembic import op

revision = "identity_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "identity_tenants",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(63), nullable=False, unique=True),
        sa.Column("display_name", sa.String(200), nullable=False, server_default=""),
        sa.Column("tier", sa.String(20), nullable=False),
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "identity_users",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "tenant_id",
            sa.String(36),
            sa.ForeignKey("identity_tenants.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False, server_default=""),
        sa.Column("password_hash", sa.String(255), nullable=False),
        # Comma-separated role names (owner, admin, member): a handful, always read together.
        sa.Column("roles", sa.String(100), nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("tenant_id", "username", name="uq_identity_users_tenant_username"),
    )
    op.create_table(
        "identity_refresh_tokens",
        # SHA-256 of the opaque token: a leaked table does not hand out sessions.
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("family_id", sa.String(36), nullable=False),
        sa.Column(
            "user_id",
            sa.String(36),
            sa.ForeignKey("identity_users.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("tenant_id", sa.String(36), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("spent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_identity_refresh_tokens_family", "identity_refresh_tokens", ["family_id"])
    op.create_index("ix_identity_refresh_tokens_user", "identity_refresh_tokens", ["user_id"])
    op.create_table(
        "identity_request_ids",
        # "signup" (scope: empty) or "create_user" (scope: the tenant id).
        sa.Column("kind", sa.String(20), primary_key=True),
        sa.Column("scope", sa.String(36), primary_key=True),
        sa.Column("request_id", sa.String(100), primary_key=True),
        # SHA-256 of the request's fields (password excluded): a reused id with other fields is refused.
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(36), nullable=False),
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("identity_request_ids")
    op.drop_index("ix_identity_refresh_tokens_user", table_name="identity_refresh_tokens")
    op.drop_index("ix_identity_refresh_tokens_family", table_name="identity_refresh_tokens")
    op.drop_table("identity_refresh_tokens")
    op.drop_table("identity_users")
    op.drop_table("identity_tenants")
