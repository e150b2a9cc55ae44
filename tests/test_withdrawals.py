"""Records withdrawn by a retraction, read from the store's tables instead of matched by id."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from unittest.mock import patch

import duckdb
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from civiscore.engine.plan import stages
from civiscore.rulebook.load import demo_rulebook_path, load
from civiscore.store import locator, withdrawals
from civiscore.store.duckdb_store import DuckDBStore
from civiscore.workspace import Workspace

from .utils import ingest_rows, resident_id

DAY = dt.timedelta(days=1)
START = dt.datetime(2025, 1, 1)
RULEBOOK = load(demo_rulebook_path())

# A record: (department, id, subject, retracts: None or an id, received day). Ids come from a
# small pool, so retractions name stored records, records stored later, or nothing at all.
_ids = st.sampled_from(["A", "B", "C", "D"])
_record = st.tuples(
    st.sampled_from(["tax", "courts"]),
    _ids,
    st.integers(1, 2),
    st.none() | _ids,
    st.integers(0, 5),
)
# Records stored in a few transactions, each folded afterwards or not.
_stores = st.lists(
    st.tuples(st.lists(_record, min_size=1, max_size=6), st.booleans()), min_size=1, max_size=4
)

_Record = tuple[str, str, int, str | None, int]


def _store(store: DuckDBStore, rows: list[_Record], batch: int) -> None:
    store.con.executemany(
        "INSERT INTO records VALUES (?, ?, ?, 'tax.late_filing', ?, NULL, NULL, ?, ?, ?)",
        [
            # A retraction's own id differs from every other record's in the store.
            (
                dep,
                f"{rid}-{batch}-{i}" if retracts else rid,
                sid,
                START,
                retracts,
                START + day * DAY,
                batch,
            )
            for i, (dep, rid, sid, retracts, day) in enumerate(rows)
        ],
    )


def _stage_rows(
    con: duckdb.DuckDBPyConnection, known_at: dt.datetime, tables: tuple[str, str] | None
) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """The plan's ``withdrawn`` and ``live`` rows at known_at, for everyone."""
    cur = con.cursor()
    try:
        plan = stages(RULEBOOK, START + 10 * DAY, known_at, None, withdrawals=tables)
        for stage in plan[:2]:
            kind = "VIEW" if stage.view else "TABLE"
            cur.execute(f"CREATE TEMP {kind} {stage.name} AS {stage.sql}")
        return (
            sorted(cur.execute("SELECT * FROM withdrawn").fetchall()),
            sorted(cur.execute("SELECT * FROM live").fetchall()),
        )
    finally:
        cur.close()


def _alike_either_way(
    store: DuckDBStore,
    known_at: int,
    read: Callable[[duckdb.DuckDBPyConnection, dt.datetime, tuple[str, str] | None], object],
) -> None:
    """Once folded, the tables cover every record, and ``read`` (rows of the plan at K) gives
    the same with them as without them."""
    withdrawals.fold_new(store.con)
    tables = withdrawals.plan_tables(store.con, "records")
    assert tables is not None
    K = START + known_at * DAY
    assert read(store.con, K, tables) == read(store.con, K, None)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    stores=_stores,
    known_at=st.integers(-1, 6),
    path=st.sampled_from(["located", "tail", "scan"]),
)
# A record retracted twice, the later retraction stored first: the earlier one must win.
@example(
    stores=[
        ([("tax", "A", 1, None, 0), ("tax", "X", 1, "A", 4)], True),
        ([("tax", "Y", 1, "A", 2)], True),
    ],
    known_at=3,
    path="located",
)
# A retraction stored before the record it names.
@example(
    stores=[([("tax", "X", 1, "A", 1)], True), ([("tax", "A", 1, None, 0)], True)],
    known_at=2,
    path="scan",
)
# A record folded before the locator knew it, retracted later: found above its watermark.
@example(
    stores=[([("tax", "A", 1, None, 0)], True), ([("tax", "X", 1, "A", 1)], True)],
    known_at=2,
    path="tail",
)
def test_the_tables_withdraw_exactly_what_matching_ids_withdraws(
    stores: list[tuple[list[_Record], bool]], known_at: int, path: str
) -> None:
    """Folded in any steps, the tables give the plan the same withdrawn and live rows. The
    records a retraction names are found by the locator's hashes of their ids ("located"),
    above its watermark in the records when it was never brought up to date ("tail"), or by a
    scan of their departments ("scan")."""
    store = DuckDBStore.memory()
    scan = path == "scan"
    limit = patch.object(withdrawals, "_LITERAL_ROWS", -1 if scan else withdrawals._LITERAL_ROWS)
    try:
        limit.start()
        for batch, (rows, fold) in enumerate(stores):
            _store(store, rows, batch)
            if fold:
                # As the store does after a transaction: the locator first, through which the
                # fold finds the older records of freshly retracted keys.
                if path != "tail":
                    locator.index_new(store.con)
                withdrawals.fold_new(store.con)
        _alike_either_way(store, known_at, _stage_rows)
    finally:
        limit.stop()
        store.close()


def test_the_tables_are_offered_only_when_they_cover_every_record() -> None:
    store = DuckDBStore.memory()
    try:
        _store(store, [("tax", "A", 1, None, 0)], 0)
        assert withdrawals.plan_tables(store.con, "records") is None
        withdrawals.fold_new(store.con)
        assert withdrawals.plan_tables(store.con, "records") == (
            withdrawals.TABLE,
            withdrawals.ROWS,
        )
        # A retraction stored without a fold may withdraw any older record: not covered.
        _store(store, [("tax", "X", 1, "A", 1)], 1)
        assert withdrawals.plan_tables(store.con, "records") is None
        store.con.execute(f"DROP TABLE {withdrawals.TABLE}")
        assert withdrawals.plan_tables(store.con, "records") is None
        withdrawals.fold_new(store.con)  # nothing to fold into, and no error
    finally:
        store.close()


def test_a_full_score_folds_what_was_stored_since(tmp_path: Path) -> None:
    """Storing records leaves the tables behind (a submission does not wait for them); the
    next full score folds them first and reads them."""
    ws, _ = Workspace.init(tmp_path / "home")
    try:
        store = ws.store
        _store(store, [("courts", "J1", 1, None, 0)], 0)
        assert store.withdraw("courts", "J1", "J1-appeal", START + DAY) == 1
        assert withdrawals.plan_tables(store.con, "records") is None
        ws.score(START + 10 * DAY, START + 10 * DAY)
        assert withdrawals.plan_tables(store.con, "records") is not None
        rows = store.con.execute(
            f"SELECT department, record_id, sid, by_record FROM {withdrawals.TABLE}"
        ).fetchall()
        assert rows == [("courts", "J1", 1, "J1-appeal")]
        assert store.con.execute(f"SELECT count(*) FROM {withdrawals.ROWS}").fetchall() == [(1,)]
    finally:
        ws.close()


def test_tables_from_before_the_rows_kept_their_content_are_rebuilt() -> None:
    """``withdrawn_rows`` once held only rowids and keys; daily updates need each row's kind,
    occurrence, quantity and receipt. Such tables are dropped and the next fold rebuilds them."""
    store = DuckDBStore.memory()
    try:
        _store(store, [("tax", "A", 1, None, 0), ("tax", "X", 1, "A", 2)], 0)
        withdrawals.fold_new(store.con)
        want = store.con.execute(f"SELECT * FROM {withdrawals.ROWS}").fetchall()
        assert len(want) == 1 and want[0][5] == "tax.late_filing"
        for column in ("kind", "occurred_at", "quantity", "retracts", "received_at"):
            store.con.execute(f"ALTER TABLE {withdrawals.ROWS} DROP COLUMN {column}")
        withdrawals.ensure(store.con)
        assert withdrawals.covered(store.con) == 0
        assert withdrawals.plan_tables(store.con, "records") is None
        withdrawals.fold_new(store.con)
        assert store.con.execute(f"SELECT * FROM {withdrawals.ROWS}").fetchall() == want
    finally:
        store.close()


def test_a_department_file_is_folded_as_it_is_ingested(tmp_path: Path) -> None:
    """The day's files bring their retractions; the records they withdraw are found then, so
    the daily update finds the tables covering every record."""
    ws, _ = Workspace.init(tmp_path / "home")
    try:
        fine = {"subject_id": resident_id(1), "kind": "tax.late_filing"}
        ingest_rows(ws, "tax", [{"record_id": "A", "occurred_at": "2025-01-01", **fine}])
        ingest_rows(
            ws, "tax", [{"record_id": "X", "retracts": "A", "occurred_at": "2025-02-01", **fine}]
        )
        assert withdrawals.plan_tables(ws.store.con, "records") is not None
        rows = ws.store.con.execute(
            f"SELECT record_id, kind, occurred_at FROM {withdrawals.ROWS}"
        ).fetchall()
        assert rows == [("A", "tax.late_filing", dt.datetime(2025, 1, 1))]
    finally:
        ws.close()


# A scored record: (id, subject, kind, occurred: days after START, retracts, received day).
# Blood donations are capped per year and volunteer hours are points per unit, so taking a
# withdrawn record back from a group's sum must come before the cap.
_SCORED_KINDS = {
    "tax.late_filing": None,
    "civic.blood_donation": None,
    "civic.volunteer_hours": 30.0,
}
_scored = st.tuples(
    _ids,
    st.integers(1, 2),
    st.sampled_from(sorted(_SCORED_KINDS)),
    st.sampled_from([0, 10, 20, 400, 800]),
    st.none() | _ids,
    st.integers(0, 5),
)


def _store_scored(
    store: DuckDBStore, rows: list[tuple[str, int, str, int, str | None, int]]
) -> None:
    store.con.executemany(
        "INSERT INTO records VALUES ('civil_affairs', ?, ?, ?, ?, ?, NULL, ?, ?, 0)",
        [
            (
                f"{rid}-{i}" if retracts else rid,
                sid,
                kind,
                START + occurred * DAY,
                _SCORED_KINDS[kind],
                retracts,
                START + day * DAY,
            )
            for i, (rid, sid, kind, occurred, retracts, day) in enumerate(rows)
        ],
    )


def _totals(
    con: duckdb.DuckDBPyConnection, known_at: dt.datetime, tables: tuple[str, str] | None
) -> dict[str, list[tuple[object, ...]]]:
    """The plan's per-group, per-context and per-subject rows for everyone at known_at."""
    at = START + 900 * DAY
    cur = con.cursor()
    try:
        plan = stages(RULEBOOK, at, known_at, None, withdrawals=tables)
        assert ("unmatched" in {s.name for s in plan}) == (tables is not None)
        for stage in plan:
            kind = "VIEW" if stage.view else "TABLE"
            cur.execute(f"CREATE TEMP {kind} {stage.name} AS {stage.sql}")
        return {
            name: sorted(cur.execute(f"SELECT * FROM {name}").fetchall(), key=repr)
            for name in ("caps", "points", "scores")
        }
    finally:
        cur.close()


@settings(max_examples=80, deadline=None)
@given(rows=st.lists(_scored, min_size=1, max_size=10), known_at=st.integers(-1, 6))
# Four donations in a year (20 points, capped at 15), two of them withdrawn (10), one of the
# retractions received after K; a subject whose every record is withdrawn, and one whose only
# uncapped record still counting is (its context then has no row).
@example(
    rows=[
        ("A", 1, "civic.blood_donation", 0, None, 0),
        ("B", 1, "civic.blood_donation", 10, None, 0),
        ("C", 1, "civic.blood_donation", 20, None, 0),
        ("D", 1, "civic.blood_donation", 20, None, 0),
        ("X", 1, "civic.blood_donation", 0, "A", 1),
        ("Y", 1, "civic.blood_donation", 0, "B", 4),
        ("A", 2, "tax.late_filing", 400, None, 0),
        ("X", 2, "tax.late_filing", 0, "A", 1),
        ("B", 3, "tax.late_filing", 800, None, 0),
        ("Y", 3, "tax.late_filing", 0, "B", 2),
    ],
    known_at=2,
)
def test_withdrawn_records_taken_back_from_the_totals_leave_what_dropping_them_does(
    rows: list[tuple[str, int, str, int, str | None, int]], known_at: int
) -> None:
    """With the store's tables, a full score counts every record and takes the withdrawn ones'
    points and counts back in the same aggregation, instead of probing every record against
    them: the caps, sub-scores and scores are those of dropping them first."""
    store = DuckDBStore.memory()
    try:
        _store_scored(store, rows)
        locator.index_new(store.con)
        _alike_either_way(store, known_at, _totals)
    finally:
        store.close()
