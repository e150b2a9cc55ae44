"""The operational schema: Alembic migrations build exactly the models, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from civiscore.store import migrate
from civiscore.store.operational import Base, make_engine


def test_migrations_reach_head_idempotently_and_match_the_models(ops_url: str) -> None:
    engine = make_engine(ops_url)
    migrate.upgrade(engine)
    migrate.upgrade(engine)  # a second run changes nothing
    assert migrate.current(engine) == migrate.head()
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"models and migrations differ; add a migration: {diff}"
    engine.dispose()
