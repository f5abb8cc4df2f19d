"""Shared Alembic environment: every service's migrations run through here, each service with its
own version table (alembic_version_<service>) so services can share a database or not."""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    version_table=context.config.get_main_option("version_table"),
    transaction_per_migration=True,
)
with context.begin_transaction():
    context.run_migrations()
