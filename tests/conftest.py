from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from civiscore.workspace import Workspace
from tests.utils import require_spark


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    """A fresh civiscore home with the demo rulebook published."""
    workspace, _ = Workspace.init(tmp_path / "home")
    yield workspace
    workspace.close()


# -- operational database: the same tests run on SQLite and on PostgreSQL --------------------

POSTGRES_URL = os.environ.get(
    "CIVISCORE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def _postgres_reachable() -> str | None:
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # any failure means: not here
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return None


@pytest.fixture(params=["sqlite", "postgresql"])
def ops_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty operational database URL: a SQLite file, or a fresh PostgreSQL schema.

    PostgreSQL tests skip with the reason when no server answers, unless
    CIVISCORE_REQUIRE_POSTGRES=1 (CI sets it), where that is a failure.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'operational.db'}"
        return
    problem = _postgres_reachable()
    if problem is not None:
        message = f"PostgreSQL not reachable at {POSTGRES_URL}: {problem}"
        if os.environ.get("CIVISCORE_REQUIRE_POSTGRES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        sep = "&" if "?" in POSTGRES_URL else "?"
        yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


# -- Spark: one local session for the whole test session -------------------------------------


@pytest.fixture
def spark_available() -> None:
    """Skip (or, with CIVISCORE_REQUIRE_SPARK=1, fail) a test when Spark cannot run here."""
    require_spark()


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """A Spark session in local mode, small enough to share two cores with the rest.

    Starting the JVM is most of a Spark test's time, so every test shares this one.
    """
    require_spark()
    from civiscore.engine.spark_engine import local_session

    session = local_session(cores=2, shuffle_partitions=1, driver_memory="2g")
    yield session
    session.stop()
