"""Each subject's first records: the population at (T, K) without a pass over every record."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from civiscore.ids import pseudonym
from civiscore.store import firsts
from civiscore.store.duckdb_store import DuckDBStore
from civiscore.workspace import Workspace
from tests.utils import resident_id, write_csv

DAY = dt.timedelta(days=1)
START = dt.datetime(2025, 1, 1)
RECEIVED = dt.datetime(2026, 1, 1)

# A record: (subject 1-3, occurred day 0-5, received day 0-5).
_record = st.tuples(st.integers(1, 3), st.integers(0, 5), st.integers(0, 5))
# Records stored in a few transactions, each folded afterwards or not. Half the transactions
# are like a department file, every record received at once, which the fold takes more simply.
_stores = st.lists(
    st.tuples(
        st.one_of(
            st.lists(_record, min_size=1, max_size=8),
            st.tuples(st.lists(_record, min_size=1, max_size=8), st.integers(0, 5)).map(
                lambda t: [(sid, occurred, t[1]) for sid, occurred, _ in t[0]]
            ),
        ),
        st.booleans(),
    ),
    min_size=1,
    max_size=4,
)


def _store_records(store: DuckDBStore, rows: list[tuple[int, int, int]], first: int) -> None:
    store.con.executemany(
        "INSERT INTO records VALUES ('tax', ?, ?, 'tax.late_filing', ?, NULL, NULL, NULL, ?, 0)",
        [
            (f"R{first + i}", sid, START + occurred * DAY, START + received * DAY)
            for i, (sid, occurred, received) in enumerate(rows)
        ],
    )


def _population(store: DuckDBStore, at: dt.datetime, known_at: dt.datetime) -> list[int]:
    sql = firsts.population_sql(store.con, "records", at, known_at)
    assert sql is not None
    rows = [int(r[0]) for r in store.con.execute(sql).fetchall()]
    assert len(rows) == len(set(rows)), "a subject listed twice"
    return sorted(rows)


def _scanned(store: DuckDBStore, at: dt.datetime, known_at: dt.datetime) -> list[int]:
    return sorted(
        int(r[0])
        for r in store.con.execute(
            "SELECT DISTINCT sid FROM records WHERE received_at <= ? AND occurred_at <= ?",
            [known_at, at],
        ).fetchall()
    )


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    stores=_stores,
    at=st.integers(-1, 6),
    known_at=st.integers(-1, 6),
)
# A later transaction brings a subject's first records earlier: the fold must update them.
@example(stores=[([(1, 5, 5)], True), ([(1, 1, 1)], True)], at=2, known_at=2)
# One file received at once: its subject is in from its earliest record on.
@example(stores=[([(1, 4, 2), (1, 1, 2), (2, 5, 2)], True)], at=2, known_at=3)
def test_the_population_is_exactly_the_subjects_with_a_record_within_t_and_k(
    stores: list[tuple[list[tuple[int, int, int]], bool]],
    at: int,
    known_at: int,
) -> None:
    """Folded or not, and whatever (T, K): the subjects a scan finds."""
    store = DuckDBStore.memory()
    try:
        first = 0
        for rows, fold in stores:
            _store_records(store, rows, first)
            first += len(rows)
            if fold:
                firsts.fold_new(store.con)
        T, K = START + at * DAY, START + known_at * DAY
        assert _population(store, T, K) == _scanned(store, T, K)
    finally:
        store.close()


def test_undecided_subjects_are_looked_up_in_their_records() -> None:
    """Earliest by occurrence received late, earliest by receipt occurred late: neither pair
    answers for a (T, K) between them, and the records must."""
    store = DuckDBStore.memory()
    try:
        # Subject 1: (occurred day 1, received day 8), (occurred day 8, received day 1), and
        # (occurred day 4, received day 4), which neither first pair shows.
        _store_records(store, [(1, 1, 8), (1, 8, 1), (1, 4, 4)], 0)
        firsts.fold_new(store.con)
        at = known_at = START + 5 * DAY
        assert _population(store, at, known_at) == [1]
        # Without the middle record nobody qualifies at (5, 5).
        store.con.execute("DELETE FROM records WHERE record_id = 'R2'")
        assert _population(store, at, known_at) == []
    finally:
        store.close()


def test_a_store_without_the_table_falls_back_to_the_scan() -> None:
    store = DuckDBStore.memory()
    try:
        store.con.execute(f"DROP TABLE {firsts.TABLE}")
        assert firsts.population_sql(store.con, "records", START, START) is None
        firsts.fold_new(store.con)  # nothing to fold into, and no error
    finally:
        store.close()


def _pairs_hold(store: DuckDBStore) -> None:
    """Each subject's firsts are its records' minima, and each pair is one real record's."""
    con = store.con
    wrong = con.execute(
        """SELECT count(*) FROM subject_firsts f FULL JOIN (
             SELECT sid, min(occurred_at) AS o, min(received_at) AS r FROM records GROUP BY sid
           ) m USING (sid)
           WHERE f.first_occurred IS DISTINCT FROM m.o OR f.first_received IS DISTINCT FROM m.r
              OR NOT EXISTS (SELECT 1 FROM records x WHERE x.sid = f.sid
                  AND x.occurred_at = f.first_occurred AND x.received_at = f.its_received)
              OR NOT EXISTS (SELECT 1 FROM records x WHERE x.sid = f.sid
                  AND x.occurred_at = f.its_occurred AND x.received_at = f.first_received)"""
    ).fetchall()[0][0]
    assert wrong == 0


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    files=st.lists(
        st.tuples(
            st.lists(st.tuples(st.integers(1, 3), st.integers(0, 5)), min_size=1, max_size=8),
            st.integers(0, 5),
            st.sampled_from(["in the transaction", "after", "not yet"]),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_folding_a_file_from_what_ingest_knows_equals_reading_it_back(
    files: list[tuple[list[tuple[int, int]], int, str]],
) -> None:
    """A file's records, all received at once, folded in the transaction that stores them from
    each subject's earliest occurrence (as ingest does), or afterwards from the records: the
    same firsts. A fold in the transaction after one that was not made waits for the next
    read-back, which folds both."""
    store = DuckDBStore.memory()
    con = store.con
    try:
        first = 0
        for rows, received, when in files:
            con.execute("BEGIN TRANSACTION")
            before = int(con.execute("SELECT count(*) FROM records").fetchall()[0][0])
            _store_records(store, [(sid, occurred, received) for sid, occurred in rows], first)
            first += len(rows)
            if when == "in the transaction":
                earliest = " UNION ALL ".join(
                    f"SELECT {sid} AS sid, TIMESTAMP '{START + day * DAY}' AS first_occurred"
                    for sid, day in sorted(
                        {s: min(o for t, o in rows if t == s) for s, _ in rows}.items()
                    )
                )
                folded = firsts.fold_stored(con, before, earliest, START + received * DAY)
                assert folded == (firsts.covered(con) == first)
            con.execute("COMMIT")
            if when == "after":
                firsts.fold_new(con)
        firsts.fold_new(con)
        assert firsts.covered(con) == first
        _pairs_hold(store)
    finally:
        store.close()


def test_ingest_folds_a_files_firsts_as_it_stores_them_unless_some_rows_clash(
    ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A department file's subjects' first records come from its accepted rows (a rejected
    row's occurrence never counts); when some of its rows are already stored they are read
    back from the records instead. Either way they are the records' minima."""
    read_back: list[int] = []
    real = firsts._new_firsts

    def spy(con: duckdb.DuckDBPyConnection, upto: int) -> str:
        read_back.append(upto)
        return real(con, upto)

    monkeypatch.setattr(firsts, "_new_firsts", spy)

    def row(n: int, subject: int, day: int, kind: str = "transport.speeding") -> dict[str, object]:
        return {
            "record_id": f"R{n}",
            "subject_id": resident_id(subject),
            "kind": kind,
            "occurred_at": f"2025-05-{day:02d}T08:00:00",
            "quantity": 12,
        }

    a = [row(1, 1, 9), row(2, 1, 4), row(3, 2, 7)]
    # Subject 2's earliest row is rejected (an unknown kind): its first record stays day 7.
    b = [row(4, 2, 1, kind="transport.teleportation"), row(5, 3, 3), row(6, 1, 2)]
    c = [*a, row(7, 4, 5)]  # a again: its rows are duplicates
    for rows, read in ((a, False), (b, False), (c, True)):
        path = write_csv(tmp_path / f"f{len(read_back)}-{len(rows)}.csv", rows)
        ws.ingest("transport", path, received_at=RECEIVED)
        assert bool(read_back) == read
        read_back.clear()
        stored = ws.store.con.execute("SELECT count(*) FROM records").fetchall()[0][0]
        assert firsts.covered(ws.store.con) == stored
        _pairs_hold(ws.store)
    first = dict(
        ws.store.con.execute(
            "SELECT s.pseudonym, f.first_occurred FROM subject_firsts f JOIN subjects s USING (sid)"
        ).fetchall()
    )
    assert first[pseudonym(ws.key, resident_id(2))] == dt.datetime(2025, 5, 7, 8)
