"""Each subject's first records: the population at (T, K) without a pass over every record."""

from __future__ import annotations

import datetime as dt

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from civiscore.store import firsts
from civiscore.store.duckdb_store import DuckDBStore

DAY = dt.timedelta(days=1)
START = dt.datetime(2025, 1, 1)

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
