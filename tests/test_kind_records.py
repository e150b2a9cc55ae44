"""The side table of records of the kinds listings read, which daily updates take them from."""

from __future__ import annotations

import datetime as dt

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from civiscore.store import kind_records
from civiscore.store.duckdb_store import DuckDBStore

KINDS = ["court.judgment_default", "court.judgment_settled", "tax.late_filing"]
START = dt.datetime(2025, 1, 1)

# A record: (subject, kind, a retraction?)
_record = st.tuples(st.integers(1, 4), st.sampled_from(KINDS), st.booleans())


def _store(store: DuckDBStore, rows: list[tuple[int, str, bool]], batch: int) -> None:
    if not rows:
        return
    store.con.executemany(
        "INSERT INTO records VALUES ('courts', ?, ?, ?, ?, NULL, 'R', ?, ?, ?)",
        [
            (f"{batch}-{i}", sid, kind, START, "X" if retracts else None, START, batch)
            for i, (sid, kind, retracts) in enumerate(rows)
        ],
    )


def _held(store: DuckDBStore, kinds: list[str], subjects: list[int], upto: int) -> list[object]:
    store.con.execute("CREATE OR REPLACE TEMP TABLE wanted AS SELECT unnest(?) AS sid", [subjects])
    return sorted(store.con.execute(kind_records.subjects_sql(kinds, "wanted", upto)).fetchall())


def _direct(store: DuckDBStore, kinds: list[str], subjects: list[int], upto: int) -> list[object]:
    return sorted(
        store.con.execute(
            f"SELECT rowid, {kind_records.COLUMNS} FROM records WHERE rowid < ? "
            "AND retracts IS NULL AND list_contains(?, kind) AND list_contains(?, sid)",
            [upto, kinds, subjects],
        ).fetchall()
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batches=st.lists(st.lists(_record, max_size=8), min_size=1, max_size=4),
    asked=st.lists(st.lists(st.sampled_from(KINDS), min_size=1, unique=True), min_size=1),
    subjects=st.lists(st.integers(1, 4), unique=True),
)
def test_it_holds_exactly_the_records_of_the_kinds_asked(
    batches: list[list[tuple[int, str, bool]]], asked: list[list[str]], subjects: list[int]
) -> None:
    """Stored in batches, brought up to date after each with whatever kinds are asked: the
    table answers for every kind asked last as a scan of ``records`` does, below any bound."""
    store = DuckDBStore.memory()
    try:
        upto = 0
        for batch, rows in enumerate(batches):
            _store(store, rows, batch)
            upto += len(rows)
            kinds = asked[batch % len(asked)]
            kind_records.bring_to(store.con, kinds, upto)
            held = kind_records.held(store.con)
            assert held is not None and set(kinds) <= held[0] and held[1] == upto
            for bound in (upto, upto // 2):
                want = _direct(store, kinds, subjects, bound)
                assert _held(store, kinds, subjects, bound) == want
    finally:
        store.close()


def test_it_reads_only_what_it_lacks() -> None:
    store = DuckDBStore.memory()
    try:
        _store(store, [(1, KINDS[0], False), (2, KINDS[2], False)], 0)
        assert kind_records.bring_to(store.con, KINDS[:1], 2) == 2  # built
        assert kind_records.bring_to(store.con, KINDS[:1], 2) == 0  # up to date
        _store(store, [(1, KINDS[1], False)], 1)
        assert kind_records.bring_to(store.con, KINDS[:1], 3) == 1  # the new row only
        # A kind it does not hold: rebuilt from every record.
        assert kind_records.bring_to(store.con, KINDS[:2], 3) == 3
        assert _held(store, KINDS[:2], [1, 2], 3) == _direct(store, KINDS[:2], [1, 2], 3)
        assert len(_held(store, KINDS[:2], [1, 2], 3)) == 2
    finally:
        store.close()
