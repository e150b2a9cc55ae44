"""Alembic environment: migrations run on the connection civiscore hands over."""

from __future__ import annotations

from alembic import context

from civiscore.store.operational import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - civiscore always passes its connection
    raise RuntimeError("run migrations through civiscore.store.migrate.upgrade()")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
