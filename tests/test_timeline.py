"""Records by occurrence, where a daily update searches for the clocks that run out."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from civiscore.store import timeline
from civiscore.store.duckdb_store import DuckDBStore
from civiscore.workspace import Workspace
from tests.utils import ingest_rows, resident_id

START = dt.datetime(2023, 12, 30)

# A record: (subject, days after START it occurred, a retraction?)
_record = st.tuples(st.integers(1, 4), st.integers(0, 800), st.booleans())

_COLUMNS = "rowid, sid, kind, occurred_at, quantity, received_at, retracts"


def _store(store: DuckDBStore, rows: list[tuple[int, int, bool]], batch: int) -> None:
    if not rows:
        return
    store.con.executemany(
        "INSERT INTO records VALUES ('tax', ?, ?, 'tax.late_filing', ?, ?, NULL, ?, ?, ?)",
        [
            (
                f"{batch}-{i}",
                sid,
                START + dt.timedelta(days=day, hours=i % 24),
                float(i),
                "X" if retracts else None,
                START,
                batch,
            )
            for i, (sid, day, retracts) in enumerate(rows)
        ],
    )


def _through(store: DuckDBStore, since: dt.datetime) -> list[object]:
    """What a search by occurrence finds through the table (and the tail above it); as the
    searches of :mod:`civiscore.engine.incremental` do, it asks for no retraction, for when
    there is no table and the relation is ``records`` itself."""
    relation = timeline.relation_sql(timeline.covered(store.con), since)
    return sorted(
        store.con.execute(
            f"SELECT {_COLUMNS} FROM {relation} WHERE occurred_at > ? AND retracts IS NULL",
            [since],
        ).fetchall()
    )


def _direct(store: DuckDBStore, since: dt.datetime) -> list[object]:
    return sorted(
        store.con.execute(
            f"SELECT {_COLUMNS} FROM records WHERE occurred_at > ? AND retracts IS NULL", [since]
        ).fetchall()
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batches=st.lists(st.lists(_record, max_size=8), min_size=1, max_size=4),
    made_after=st.integers(0, 3),
    folded=st.lists(st.booleans(), min_size=4, max_size=4),
    since=st.integers(-1, 800),
    kept_after=st.integers(-1, 800),
)
def test_a_search_by_occurrence_finds_what_a_scan_of_the_records_finds(
    batches: list[list[tuple[int, int, bool]]],
    made_after: int,
    folded: list[bool],
    since: int,
    kept_after: int,
) -> None:
    """Made after any batch with the records that occurred after any moment, folded after some
    of the later ones: a search after any moment finds what a scan of the records finds (the
    table and the tail above its watermark hold each such non-retraction once, or the search
    reaches before the table and reads the records), and each fold is in order of
    occurrence."""
    store = DuckDBStore.memory()
    try:
        for batch, rows in enumerate(batches):
            _store(store, rows, batch)
            if batch == made_after:
                timeline.bring_to(store.con, START + dt.timedelta(days=kept_after))
            elif folded[batch]:
                timeline.fold_new(store.con)
            at = START + dt.timedelta(days=since)
            assert _through(store, at) == _direct(store, at)
        coverage = timeline.covered(store.con)
        if coverage is not None:
            older = store.con.execute(
                f"SELECT count(*) FROM {timeline.TABLE} WHERE occurred_at <= ?", [coverage.since]
            ).fetchall()
            assert older == [(0,)]
            # Each fold is sorted, so each batch (all within one fold) is in order of
            # occurrence in the table.
            backwards = store.con.execute(
                f"""SELECT count(*) FROM (
                    SELECT t.occurred_at < lag(t.occurred_at) OVER (
                        PARTITION BY r.batch ORDER BY t.rowid) AS back
                    FROM {timeline.TABLE} t JOIN records r ON r.rowid = t.row_id) x
                WHERE back"""
            ).fetchall()
            assert backwards == [(0,)]
    finally:
        store.close()


def test_without_the_table_the_search_reads_the_records_and_nothing_is_folded() -> None:
    store = DuckDBStore.memory()
    try:
        _store(store, [(1, 5, False), (2, 9, True)], 0)
        timeline.fold_new(store.con)  # ingest's call: no table yet, so none is made
        assert timeline.covered(store.con) is None
        assert timeline.relation_sql(None, START) == "records"
        timeline.bring_to(store.con, dt.datetime.min)  # an update's: made, covering every record
        assert timeline.covered(store.con) == timeline.Coverage(2, dt.datetime.min)
        rows = store.con.execute(f"SELECT row_id FROM {timeline.TABLE}").fetchall()
        assert rows == [(0,)]  # the retraction is not kept
    finally:
        store.close()


def test_a_year_at_a_time_keeps_the_whole_table_in_order() -> None:
    """The first build sorts one calendar year after another; together they are in order.
    Records that occurred by the moment it was made from are left out."""
    store = DuckDBStore.memory()
    try:
        _store(store, [(1, day, False) for day in (700, 3, 400, 0, 2, 365, 1, 366)], 0)
        timeline.bring_to(store.con, START + dt.timedelta(hours=12))  # not day 0's record
        days = [
            (r[0] - START).days
            for r in store.con.execute(
                f"SELECT occurred_at FROM {timeline.TABLE} ORDER BY rowid"
            ).fetchall()
        ]
        assert days == [1, 2, 3, 365, 366, 400, 700]
    finally:
        store.close()


def test_a_department_file_is_folded_as_it_is_ingested_once_the_table_exists(
    tmp_path: Path,
) -> None:
    ws, _ = Workspace.init(tmp_path / "home")
    try:
        fine = {"subject_id": resident_id(1), "kind": "tax.late_filing"}
        ingest_rows(ws, "tax", [{"record_id": "A", "occurred_at": "2025-01-01", **fine}])
        assert timeline.covered(ws.store.con) is None  # ingest does not make it
        timeline.bring_to(ws.store.con, dt.datetime(2024, 1, 1))
        ingest_rows(ws, "tax", [{"record_id": "B", "occurred_at": "2025-02-01", **fine}])
        ingest_rows(ws, "tax", [{"record_id": "C", "occurred_at": "2023-02-01", **fine}])
        coverage = timeline.covered(ws.store.con)
        assert coverage == timeline.Coverage(3, dt.datetime(2024, 1, 1))
        rows = ws.store.con.execute(
            f"SELECT occurred_at FROM {timeline.TABLE} ORDER BY row_id"
        ).fetchall()
        assert rows == [(dt.datetime(2025, 1, 1),), (dt.datetime(2025, 2, 1),)]
    finally:
        ws.close()
