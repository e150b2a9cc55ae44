"""The subject locator: a few subjects' records found without scanning every record."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from civiscore.store import locator
from civiscore.store.base import BATCH_SCHEMA
from civiscore.store.duckdb_store import DuckDBStore

RECEIVED = dt.datetime(2026, 1, 1)

# A file: one subject number (1-8) per row.
_files = st.lists(st.lists(st.integers(1, 8), min_size=1, max_size=15), min_size=1, max_size=4)


def _batch(first: int, subjects: list[int]) -> pa.Table:
    n = len(subjects)
    return pa.table(
        {
            "row": list(range(1, n + 1)),
            "line": list(range(2, n + 2)),
            "record_id": [f"R{first + i}" for i in range(n)],
            "pseudonym": [f"p{s}" for s in subjects],
            "subject_type": ["person"] * n,
            "kind": ["transport.speeding"] * n,
            "occurred_at": [dt.datetime(2025, 1, 1) + dt.timedelta(hours=i) for i in range(n)],
            "quantity": [12.0] * n,
            "reference": [None] * n,
            "retracts": [None] * n,
        },
        schema=BATCH_SCHEMA,
    )


def _rows(store: DuckDBStore, sql: str) -> list[tuple[Any, ...]]:
    return sorted(store.con.execute(f"SELECT department, record_id, sid FROM ({sql})").fetchall())


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    files=_files,
    unindexed=st.lists(st.integers(1, 8), max_size=5),
    asked=st.lists(st.integers(1, 10), max_size=4),
    few=st.booleans(),
    literal=st.booleans(),
)
def test_located_records_are_exactly_the_subjects_records(
    files: list[list[int]],
    unindexed: list[int],
    asked: list[int],
    few: bool,
    literal: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(locator, "_MAX_LOCATED", 10_000 if few else 0)
    monkeypatch.setattr(locator, "_LITERAL_ROWS", 10_000 if literal else 0)
    store = DuckDBStore.memory()
    try:
        first = 0
        for subjects in files:
            store.write_batch("transport", _batch(first, subjects), RECEIVED)
            first += len(subjects)
        # Rows stored past the locator (as the policy lab does) are found all the same.
        store.con.execute(
            "INSERT INTO records SELECT 'transport', 'U' || i, sid, 'transport.speeding', "
            "TIMESTAMP '2025-06-01', 3, NULL, NULL, TIMESTAMP '2026-01-01', 0 "
            "FROM (SELECT unnest(range(?)) AS i, sid FROM subjects ORDER BY sid LIMIT 1) "
            "WHERE ? > 0",
            [len(unindexed), len(unindexed)],
        )
        sids = [int(r[0]) for r in store.con.execute("SELECT sid FROM subjects").fetchall()]
        wanted = sorted({s for s in asked if s <= len(sids) + 2})
        sql = locator.subjects_records_sql(store.con, "records", wanted)
        expected = _rows(
            store, f"SELECT * FROM records WHERE sid IN ({', '.join(map(str, wanted)) or 'NULL'})"
        )
        located = store.con.execute(
            f"SELECT count(*) FROM {locator.TABLE} WHERE sid IN "
            f"({', '.join(map(str, wanted)) or 'NULL'})"
        ).fetchall()[0][0]
        if sql is None:  # too many records to locate: the caller scans
            assert not few and located > 0
        else:
            assert _rows(store, sql) == expected
            # Asked for, each record's rowid comes first, whichever way it was found.
            with_rowid = locator.subjects_records_sql(store.con, "records", wanted, with_rowid=True)
            assert with_rowid is not None
            assert sorted(
                store.con.execute(f"SELECT row_id, record_id FROM ({with_rowid})").fetchall()
            ) == sorted(
                store.con.execute(
                    f"SELECT rowid, record_id FROM records WHERE sid IN "
                    f"({', '.join(map(str, wanted)) or 'NULL'})"
                ).fetchall()
            )
    finally:
        store.close()


def test_the_locator_covers_what_each_transaction_stored() -> None:
    store = DuckDBStore.memory()
    try:
        store.write_batch("transport", _batch(0, [1, 2, 1, 3]), RECEIVED)
        assert locator.covered(store.con) == 4
        entries = store.con.execute(f"SELECT sid, row_id FROM {locator.TABLE}").fetchall()
        assert sorted(entries) == entries, "sorted by subject within an ingest"
        store.withdraw("transport", "R0", "W1", RECEIVED)
        assert locator.covered(store.con) == 5
    finally:
        store.close()


def test_a_store_without_a_locator_is_scanned(tmp_path: Any) -> None:
    store = DuckDBStore.memory()
    try:
        store.con.execute(f"DROP TABLE {locator.TABLE}")
        assert locator.covered(store.con) is None
        assert locator.subjects_records_sql(store.con, "records", [1]) is None
    finally:
        store.close()


def test_a_locator_from_before_the_keys_is_rebuilt_with_them() -> None:
    """A locator without each record's key is dropped when the store is opened, and the next
    transaction that stores records indexes every record again, with its key."""
    store = DuckDBStore.memory()
    try:
        store.write_batch("transport", _batch(0, [1, 2, 1]), RECEIVED)
        store.con.execute(f"ALTER TABLE {locator.TABLE} DROP COLUMN key")
        locator.ensure(store.con)  # as opening the store does
        assert locator.covered(store.con) == 0
        store.write_batch("transport", _batch(3, [4]), RECEIVED)
        assert locator.covered(store.con) == 4
        entries = store.con.execute(
            f"SELECT l.sid, l.row_id FROM {locator.TABLE} l JOIN records r ON r.rowid = l.row_id "
            f"WHERE l.key = {locator.key_sql('r.department', 'r.record_id')} AND l.sid = r.sid"
        ).fetchall()
        assert sorted(entries) == [(1, 0), (1, 2), (2, 1), (3, 3)]  # p4 is the third subject
    finally:
        store.close()
