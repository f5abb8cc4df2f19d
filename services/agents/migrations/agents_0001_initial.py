"""agents: agents, immutable versions, tenant templates, request ids, per-tenant agent counts.

Times are integer microseconds since the epoch: exact keyset cursors, identical on SQLite and
PostgreSQL (SQLite has no timezone-aware timestamp type).

Revision ID: agents_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "agents_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agents",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant_id", sa.String(128), nullable=False),
        sa.Column("display_name", sa.String(100), nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("creator", sa.String(128), nullable=False),
        sa.Column("template_id", sa.String(64), nullable=False, server_default=""),
        sa.Column("create_time_us", sa.BigInteger, nullable=False),
        sa.Column("update_time_us", sa.BigInteger, nullable=False),
        sa.Column("deleted_at_us", sa.BigInteger, nullable=True),
    )
    # Keyset pagination of ListAgents, with and without the state filter.
    op.create_index("ix_agents_tenant_created", "agents", ["tenant_id", "create_time_us", "id"])
    op.create_index(
        "ix_agents_tenant_state_created", "agents", ["tenant_id", "state", "create_time_us", "id"]
    )
    op.create_table(
        "agent_versions",
        sa.Column("agent_id", sa.String(36), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("tenant_id", sa.String(128), nullable=False),
        sa.Column("content", sa.JSON, nullable=False),
        sa.Column("change_type", sa.String(16), nullable=False),
        sa.Column("changed_fields", sa.JSON, nullable=False),
        sa.Column("author", sa.String(128), nullable=False),
        sa.Column("create_time_us", sa.BigInteger, nullable=False),
        sa.Column("source_version", sa.BigInteger, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("agent_id", "version"),
    )
    op.create_table(
        "agent_templates",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(128), nullable=False),
        sa.Column("display_name", sa.String(100), nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("create_time_us", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_agent_templates_tenant_created", "agent_templates", ["tenant_id", "create_time_us", "id"]
    )
    op.create_table(
        "agent_request_ids",
        sa.Column("tenant_id", sa.String(128), nullable=False),
        # "agent" or "template": the two creates that take a request id.
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("resource_id", sa.String(64), nullable=False),
        sa.Column("create_time_us", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "kind", "request_id"),
    )
    op.create_table(
        "tenant_agent_counts",
        sa.Column("tenant_id", sa.String(128), primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_table("tenant_agent_counts")
    op.drop_table("agent_request_ids")
    op.drop_index("ix_agent_templates_tenant_created", "agent_templates")
    op.drop_table("agent_templates")
    op.drop_table("agent_versions")
    op.drop_index("ix_agents_tenant_state_created", "agents")
    op.drop_index("ix_agents_tenant_created", "agents")
    op.drop_table("agents")
