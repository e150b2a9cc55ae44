"""``score --incremental``: a snapshot brought forward equals a full score, row for row."""

from __future__ import annotations

import datetime as dt
import doctest
import json
from pathlib import Path
from typing import Any
from unittest.mock import patch

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

from civiscore.cli import app
from civiscore.engine import duckdb_engine, incremental, plan, tallies
from civiscore.engine.incremental import LINEAGE, SNAPSHOT_TABLES
from civiscore.ids import pseudonym, subject_type
from civiscore.rulebook import registry
from civiscore.rulebook.load import demo_rulebook_path
from civiscore.rulebook.model import Duration
from civiscore.store import snapshots, timeline, withdrawals
from civiscore.store.base import BATCH_SCHEMA, Snapshot
from civiscore.synth.city import write_city
from civiscore.timeutil import now_local, sql_timestamp
from tests.utils import FIELDS, ingest_rows, resident_id, write_csv

# -- helpers ------------------------------------------------------------------------------------

KINDS: dict[str, list[tuple[str, str]]] = {
    "transport": [("transport.speeding", "q"), ("transport.fare_evasion", "")],
    "courts": [("court.judgment_default", "r"), ("court.judgment_settled", "r")],
    "civil_affairs": [("civic.volunteer_hours", "q"), ("civic.heroic_act", "")],
    "blood_service": [("civic.blood_donation", "")],
    "tax": [("tax.late_filing", ""), ("tax.evasion_decision", "r")],
}
START = dt.datetime(2022, 1, 1)
SPAN_DAYS = 4 * 365
# When each bucket of records reaches the store.
RECEIVED = (dt.datetime(2027, 1, 1), dt.datetime(2027, 6, 1), dt.datetime(2028, 1, 1))
# The clocks of the demo rulebook: rule validity and listing durations.
CLOCKS = [Duration.parse(d) for d in ("P1Y", "P2Y", "P3Y", "P180D")]
MICRO = dt.timedelta(microseconds=1)

PROFILE = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def rows_of(con: duckdb.DuckDBPyConnection, snapshot_id: int) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of a snapshot, without its number, sorted: what two snapshots must share.

    A delta snapshot's rows are resolved through its chain of bases, as every reader does.
    """
    out = {}
    for table, columns in SNAPSHOT_TABLES.items():
        rows = con.execute(
            f"SELECT {columns} FROM {snapshots.resolved(con, table, snapshot_id)} s"
        ).fetchall()
        out[table] = sorted(rows, key=repr)
    return out


def assert_same_snapshot(con: duckdb.DuckDBPyConnection, a: Snapshot, b: Snapshot) -> None:
    assert (a.rulebook_version, a.at, a.known_at, a.subjects) == (
        b.rulebook_version,
        b.at,
        b.known_at,
        b.subjects,
    )
    rows_a, rows_b = rows_of(con, a.snapshot_id), rows_of(con, b.snapshot_id)
    for table in SNAPSHOT_TABLES:
        only_a = set(rows_a[table]) - set(rows_b[table])
        only_b = set(rows_b[table]) - set(rows_a[table])
        assert rows_a[table] == rows_b[table], (table, only_a, only_b)


def _load(ws: Any, rows: list[dict[str, Any]], received: dt.datetime) -> None:
    """Store rows as one batch per department, as ingest would after validating them."""
    by_dep: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_dep.setdefault(r["department"], []).append(r)
    for dep, dep_rows in sorted(by_dep.items()):
        batch = pa.Table.from_pylist(
            [
                {
                    "row": n,
                    "line": n + 2,
                    "record_id": r["record_id"],
                    "pseudonym": pseudonym(ws.key, r["subject_id"]),
                    "subject_type": subject_type(r["subject_id"]),
                    "kind": r["kind"],
                    "occurred_at": r["occurred_at"],
                    "quantity": r.get("quantity"),
                    "reference": r.get("reference"),
                    "retracts": r.get("retracts"),
                }
                for n, r in enumerate(dep_rows)
            ],
            schema=BATCH_SCHEMA,
        )
        result = ws.store.write_batch(dep, batch, received)
        assert result.accepted == len(dep_rows) and result.conflicts.num_rows == 0


def _fresh(tmp_path_factory: Any) -> Any:
    from civiscore.workspace import Workspace

    ws, _ = Workspace.init(Path(tmp_path_factory.mktemp("home")))
    return ws


# -- generated histories ------------------------------------------------------------------------


def _record(
    draw: st.DrawFn, i: int, dep: str, kind: str, extra: str, subject: int, when: dt.datetime
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "department": dep,
        "record_id": f"R{i}",
        "subject_id": resident_id(subject),
        "kind": kind,
        "occurred_at": when,
        "bucket": draw(st.integers(0, 2)),
    }
    if "q" in extra:
        row["quantity"] = draw(st.integers(0, 80))
    if "r" in extra:
        row["reference"] = f"J{draw(st.integers(1, 3))}"
    return row


@st.composite
def histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Records for five residents over four years, each in a bucket saying when it arrives.

    Bucket 0 is known by the base snapshot, bucket 1 arrives before the updates, bucket 2
    between them. Bursts of one kind for one subject make conduct listings and merit caps
    likely. Retractions arrive in their target's bucket or later.
    """
    rows: list[dict[str, Any]] = []

    def day() -> dt.datetime:
        return START + dt.timedelta(
            days=draw(st.integers(0, SPAN_DAYS)), hours=draw(st.integers(0, 23))
        )

    for _ in range(draw(st.integers(min_value=0, max_value=20))):
        dep = draw(st.sampled_from(sorted(KINDS)))
        kind, extra = draw(st.sampled_from(KINDS[dep]))
        rows.append(_record(draw, len(rows), dep, kind, extra, draw(st.integers(1, 5)), day()))
    for _ in range(draw(st.integers(0, 2))):
        dep = draw(st.sampled_from([*sorted(KINDS), "transport", "civil_affairs", "courts"]))
        kind, extra = draw(st.sampled_from(KINDS[dep]))
        if dep == "transport":  # conduct listings: three fare evasions within a year
            kind, extra = draw(st.sampled_from([KINDS[dep][1], *KINDS[dep]]))
        subject, when = draw(st.integers(1, 5)), day()
        for _ in range(draw(st.integers(2, 5))):
            rows.append(_record(draw, len(rows), dep, kind, extra, subject, when))
            # Never at the same instant: a conduct listing names its latest record with
            # arg_max(record_id, since), which may pick either of two records at one instant.
            when += dt.timedelta(days=draw(st.integers(0, 200)), hours=draw(st.integers(1, 5)))
    targets = draw(st.lists(st.sampled_from(rows), max_size=4, unique_by=id)) if rows else []
    for j, target in enumerate(targets):
        later = target["occurred_at"] + dt.timedelta(days=draw(st.integers(0, 400)))
        rows.append(
            {
                **target,
                "record_id": f"X{j}",
                "retracts": target["record_id"],
                "occurred_at": later,
                "bucket": draw(st.integers(target["bucket"], 2)),
            }
        )
    return rows


def moments(draw: st.DrawFn, rows: list[dict[str, Any]]) -> dt.datetime:
    """A moment where something may happen: any day, or exactly at a record's occurrence or at
    the end of one of its clocks (validity, listing), where a threshold flips."""
    anchors = [r["occurred_at"] for r in rows]
    choice = draw(st.sampled_from([0, 1, 2, 2])) if anchors else 0
    if choice == 0:
        return START + dt.timedelta(days=draw(st.integers(0, SPAN_DAYS + 1200)), hours=12)
    anchor = draw(st.sampled_from(anchors))
    if choice == 2:
        anchor = draw(st.sampled_from(CLOCKS)).add_to(anchor)
    return anchor


def records_seen(ws: Any) -> int:
    return int(ws.store.con.execute("SELECT count(*) FROM records").fetchall()[0][0])


def no_fold(con: duckdb.DuckDBPyConnection, since: dt.datetime) -> None:
    """In place of :func:`civiscore.store.timeline.bring_to`: leave the table as it is."""


STEPS = [dt.timedelta(0), MICRO, dt.timedelta(hours=1), dt.timedelta(days=1), dt.timedelta(days=40)]


@PROFILE
@given(rows=histories(), data=st.data())
def test_incremental_snapshot_equals_full_score(
    tmp_path_factory: Any, rows: list[dict[str, Any]], data: st.DataObject
) -> None:
    """For any T1 ≤ T2 ≤ T3 and K1 ≤ K2 ≤ K3, base → update → update equals full scores."""
    draw = data.draw
    # T1 < focus <= T2: the first update straddles a moment where something may happen.
    focus = moments(draw, rows)
    t1 = focus - draw(st.sampled_from(STEPS[1:]))
    t2 = focus + draw(st.sampled_from(STEPS))
    t3 = draw(st.sampled_from([t2, moments(draw, rows), t2 + dt.timedelta(days=400)]))
    ts = [t1, t2, max(t2, t3)]
    # K1 may be later than what was received when the base was scored (a known-at in the
    # future), and late buckets are stored before or after the base was scored: either way
    # the update must see them, by received_at or by the lineage watermark.
    k1 = draw(st.sampled_from([RECEIVED[0], RECEIVED[1] - MICRO, RECEIVED[1], RECEIVED[2]]))
    k2 = max(k1, draw(st.sampled_from([k1, RECEIVED[1], RECEIVED[2] - MICRO])))
    k3 = max(k2, draw(st.sampled_from([k2, RECEIVED[2]])))
    store_late_first = draw(st.booleans())
    # Deltas on deltas (whatever share they rescored), or each update consolidated at once.
    depth, share = draw(st.sampled_from([(snapshots.MAX_DEPTH, 1.0), (0, 0.0)]))
    # The affected subjects' records found through the locator (every record of theirs), or by
    # scans of the records that can still matter, as for more than a few thousand subjects.
    locate_at_most = draw(st.sampled_from([duckdb_engine._LOCATE_AT_MOST, 0]))
    # By tallies of the changed records (whenever the base allows), or by the plan over the
    # affected subjects' records.
    tally = draw(st.booleans())
    refuse = None if tally else (lambda *args: "asked not to")
    # Today's ending clocks searched in the records by occurrence, kept up to date by each
    # update ("folded"); made before the late buckets and never folded since, so those are
    # read from above its watermark ("tail", from any moment on: a search that reaches before
    # the table reads the records); or never made, so the records are searched.
    by_time = draw(st.sampled_from(["folded", "tail", "none"]))
    kept_after = draw(st.sampled_from([dt.datetime.min, focus]))
    ws = _fresh(tmp_path_factory)
    try:
        _load(ws, [r for r in rows if r["bucket"] == 0], RECEIVED[0])

        def load_late() -> None:
            for bucket in (1, 2):
                _load(ws, [r for r in rows if r["bucket"] == bucket], RECEIVED[bucket])

        if by_time == "tail":
            timeline.bring_to(ws.store.con, kept_after)
        if store_late_first:
            load_late()
        rb = ws.rulebook_at(ts[0])
        base = ws.engine.score(rb, ts[0], k1)
        if not store_late_first:
            load_late()
        con = ws.store.con
        previous = base
        for t, k in ((ts[1], k2), (ts[2], k3)):
            with (
                patch.object(snapshots, "MAX_DEPTH", depth),
                patch.object(snapshots, "CONSOLIDATE_SHARE", share),
                patch.object(duckdb_engine, "_LOCATE_AT_MOST", locate_at_most),
                patch.object(tallies, "why_not", refuse or tallies.why_not),
                patch.object(
                    timeline, "bring_to", timeline.bring_to if by_time == "folded" else no_fold
                ),
            ):
                update = ws.engine.update(rb, previous, t, k, full_share=None)
            if by_time == "none":
                assert timeline.covered(con) is None
            assert update.full_reason is None
            if tally:
                # Only records stored after the base but received by its K stop tallies.
                assert update.method == "tallies" or "stored after" in str(update.records_reason)
            else:
                assert update.method == "records"
            assert update.base_snapshot_id == previous.snapshot_id
            full = ws.engine.score(rb, t, k)
            assert_same_snapshot(con, update.snapshot, full)
            previous = update.snapshot
    finally:
        ws.close()


@PROFILE
@given(rows=histories(), data=st.data())
def test_the_changed_records_are_each_read_once_and_none_is_missed(
    tmp_path_factory: Any, rows: list[dict[str, Any]], data: st.DataObject
) -> None:
    """Tallies read cases (a) and (d) without repeats (``changes_sql(disjoint=True)``), so only
    the few clock and withdrawn records need dropping as repeats; that gives exactly the
    records of every case once each, as the plain union of the cases with repeats dropped."""
    draw = data.draw
    focus = moments(draw, rows)
    t1 = focus - draw(st.sampled_from(STEPS[1:]))
    t2 = focus + draw(st.sampled_from(STEPS))
    # Late buckets received in (K1, K2]: records both received and dated in the window.
    k1 = draw(st.sampled_from([RECEIVED[0], RECEIVED[1] - MICRO]))
    k2 = draw(st.sampled_from([RECEIVED[1], RECEIVED[2]]))
    ws = _fresh(tmp_path_factory)
    try:
        _load(ws, [r for r in rows if r["bucket"] == 0], RECEIVED[0])
        rb = ws.rulebook_at(t1)
        base = ws.engine.score(rb, t1, k1)
        for bucket in (1, 2):
            _load(ws, [r for r in rows if r["bucket"] == bucket], RECEIVED[bucket])
        con = ws.store.con
        withdrawals.fold_new(con)
        seen = records_seen(ws)
        cur = con.cursor()
        try:
            tallies.find_changes(cur, rb, base, seen, seen, t2, k2)
            got = cur.execute("SELECT row_id FROM changed ORDER BY row_id").fetchall()
            parts = incremental.changes_sql(rb, base, None, t2, k2, "rowid AS row_id", seen)
            K1, K2 = sql_timestamp(k1), sql_timestamp(k2)
            parts.append(
                f"SELECT row_id FROM {withdrawals.ROWS} WHERE known_since > {K1} "
                f"AND known_since <= {K2} AND row_id < {seen}"
            )
            union = " UNION ".join(parts)
            want = cur.execute(f"SELECT row_id FROM ({union}) u ORDER BY row_id").fetchall()
        finally:
            cur.close()
        assert got == want
    finally:
        ws.close()


# -- each case of the argument, one at a time ---------------------------------------------------


def _rec(record_id: str, kind: str, occurred: str, **extra: Any) -> dict[str, Any]:
    departments = {k: dep for dep, kinds in KINDS.items() for k, _ in kinds}
    return {
        "department": departments[kind],
        "record_id": record_id,
        "subject_id": resident_id(1),
        "kind": kind,
        "occurred_at": dt.datetime.fromisoformat(occurred),
        **extra,
    }


# (records known by K1, records received in (K1, K2], T1, T2): each changes subject 1's rows.
CASES: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]], str, str]] = {
    "a: a new record": (
        [_rec("S1", "transport.speeding", "2023-06-01T08:00", quantity=10)],
        [_rec("L1", "tax.late_filing", "2024-02-01T08:00")],
        "2024-03-01",
        "2024-03-01",
    ),
    "a: a retraction": (
        [_rec("L1", "tax.late_filing", "2024-02-01T08:00")],
        [_rec("X1", "tax.late_filing", "2024-02-15T08:00", retracts="L1")],
        "2024-03-01",
        "2024-03-01",
    ),
    "a: a settlement": (
        [_rec("C1", "court.judgment_default", "2024-01-05T10:00", reference="J1")],
        [_rec("C2", "court.judgment_settled", "2024-02-20T10:00", reference="J1")],
        "2024-03-01",
        "2024-03-01",
    ),
    "d: known early, dated later": (
        [_rec("L1", "tax.late_filing", "2024-03-10T08:00")],
        [],
        "2024-03-01",
        "2024-03-20",
    ),
    "b: validity ends": (
        [_rec("L1", "tax.late_filing", "2023-03-05T08:00")],
        [],
        "2024-03-01",
        "2024-03-10",
    ),
    # Instances start on 21 and 31 January (third and fourth evasion within P12M) and end
    # P180D later, on 19 and 29 July: between T1 and T2 the listing's since moves from
    # 21 to 31 January while its until (29 July) stays. No validity ends in between (P1Y).
    "c: a conduct-listing instance ends": (
        [
            _rec(f"F{i}", "transport.fare_evasion", f"2024-01-{day}T08:00")
            for i, day in enumerate(("01", "11", "21", "31"))
        ],
        [],
        "2024-07-18",
        "2024-07-25",
    ),
}


@pytest.mark.parametrize("by_time", ["folded", "tail", "short"])
@pytest.mark.parametrize("stored", ["before the base", "after the base"])
@pytest.mark.parametrize("case", list(CASES))
def test_each_case_rescores_exactly_the_subject_it_touches(
    ws: Any, case: str, stored: str, by_time: str
) -> None:
    """Records received after K1 are found by ``received_at`` when they were stored before
    the base was scored (asked about an earlier K), by the watermark when stored after.
    Ending clocks are found in the records by occurrence; above the watermark of a table
    made before any record was stored and never folded since ("tail"); or, for a table that
    keeps only records later than any here ("short"), in the records themselves."""
    known, arriving, t1_text, t2_text = CASES[case]
    bystander = {**_rec("B1", "tax.late_filing", "2023-01-10T08:00"), "subject_id": resident_id(9)}
    k1, k2 = RECEIVED[0], RECEIVED[1]
    if by_time == "tail":
        timeline.bring_to(ws.store.con, dt.datetime.min)
    _load(ws, [*known, bystander], k1)
    if by_time == "short":
        timeline.bring_to(ws.store.con, dt.datetime(2030, 1, 1))  # covers them, keeps none
    if stored == "before the base":
        _load(ws, arriving, k2)
    t1, t2 = (dt.datetime.fromisoformat(t) + dt.timedelta(hours=12) for t in (t1_text, t2_text))
    base = ws.score(t1, k1)
    if stored == "after the base":
        _load(ws, arriving, k2)
    fold = no_fold if by_time == "tail" else timeline.bring_to
    with patch.object(timeline, "bring_to", fold):
        update = ws.score_incremental(t2, k2, full_share=None)
    coverage = timeline.covered(ws.store.con)
    assert coverage is not None
    assert coverage.upto == (0 if by_time == "tail" else records_seen(ws))
    assert (update.base_snapshot_id, update.affected_subjects) == (base.snapshot_id, 1)
    con = ws.store.con
    assert rows_of(con, update.snapshot.snapshot_id) != rows_of(con, base.snapshot_id)
    assert_same_snapshot(con, update.snapshot, ws.score(t2, k2))


# -- a synthetic city ---------------------------------------------------------------------------

CITY_END = dt.date(2026, 10, 31)
CUT = "2026-07-01"  # records on or after this day arrive late


@pytest.fixture(scope="module")
def city_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """A 300-resident city, each department's records split into early and late files."""
    root = tmp_path_factory.mktemp("city")
    files = write_city(root, residents=300, years=3, seed=11, end=CITY_END)
    out = {}
    columns = "{" + ", ".join(f"'{c}': 'VARCHAR'" for c in FIELDS) + "}"
    readers = {
        ".csv": "read_csv('PATH', all_varchar = true)",
        ".jsonl": "read_json('PATH', format = 'newline_delimited', columns = " + columns + ")",
        ".parquet": "read_parquet('PATH')",
    }
    con = duckdb.connect()
    try:
        for dep, path in files.departments.items():
            src = readers[path.suffix].replace("PATH", str(path))
            early, late = root / f"{dep}-early.csv", root / f"{dep}-late.csv"
            day = "coalesce(substr(occurred_at, 1, 10), '')"
            con.execute(f"COPY (SELECT * FROM {src} WHERE {day} < '{CUT}') TO '{early}'")
            con.execute(f"COPY (SELECT * FROM {src} WHERE {day} >= '{CUT}') TO '{late}'")
            out[dep] = (early, late)
    finally:
        con.close()
    return out


@pytest.mark.parametrize("locate", [True, False], ids=["located", "scanned"])
@pytest.mark.parametrize("days", [0, 1, 45, 400])
def test_incremental_on_a_synthetic_city_equals_full_score(
    tmp_path: Path, city_files: dict[str, tuple[Path, Path]], days: int, locate: bool
) -> None:
    """An update equals a full score; its subjects' records read through the locator (every
    record of theirs) or by scans of those that can still matter (as for many subjects)."""
    from civiscore.workspace import Workspace

    ws, _ = Workspace.init(tmp_path / "home")
    try:
        k1, k2 = dt.datetime(2026, 11, 1), dt.datetime(2026, 11, 2)
        for dep, (early, _late) in city_files.items():
            ws.ingest(dep, early, received_at=k1)
        t1 = dt.datetime.combine(dt.date.fromisoformat(CUT), dt.time.max) - dt.timedelta(days=60)
        base = ws.score(t1, k1)
        for dep, (_early, late) in city_files.items():
            ws.ingest(dep, late, received_at=k2)
        t2 = t1 + dt.timedelta(days=days)
        with patch.object(duckdb_engine, "_LOCATE_AT_MOST", 10**9 if locate else 0):
            update = ws.score_incremental(t2, k2, full_share=None)
        assert update.base_snapshot_id == base.snapshot_id
        assert update.affected_subjects is not None
        full = ws.score(t2, k2)
        assert_same_snapshot(ws.store.con, update.snapshot, full)
        if days <= 1:  # most of the city is untouched by a day
            assert update.affected_subjects < full.subjects / 2
    finally:
        ws.close()


# -- the watermark, lineage and fallbacks -------------------------------------------------------


def test_records_stored_after_the_base_with_an_earlier_received_at_are_picked_up(
    ws: Any,
) -> None:
    """A snapshot asked about a future known-at, then records arrive dated before it."""
    subject = resident_id(21)
    fine = {"subject_id": subject, "kind": "tax.late_filing", "occurred_at": "2025-03-01"}
    ingest_rows(ws, "tax", [{"record_id": "A", **fine}], received_at=dt.datetime(2025, 4, 1))
    t, k = dt.datetime(2025, 6, 1), dt.datetime(2030, 1, 1)
    base = ws.score(t, k)
    # Received before k, stored after the base: not in (K1, K2], so only the watermark
    # (rows stored after the base's plan read the table) finds it.
    ingest_rows(ws, "tax", [{"record_id": "B", **fine}], received_at=dt.datetime(2025, 5, 1))
    update = ws.score_incremental(t, k, full_share=None)
    assert update.base_snapshot_id == base.snapshot_id and update.affected_subjects == 1
    # The base never counted it though "received by K1" says so: tallies would be wrong.
    assert update.method == "records" and "stored after" in str(update.records_reason)
    full = ws.score(t, k)
    assert_same_snapshot(ws.store.con, update.snapshot, full)
    scores = snapshots.resolved(ws.store.con, "snapshot_scores", update.snapshot.snapshot_id)
    score = ws.store.con.execute(f"SELECT score FROM {scores} s").fetchall()
    assert [float(s[0]) for s in score] == [990.0]


def test_a_day_of_records_goes_by_tallies(ws: Any) -> None:
    fine = {"subject_id": resident_id(3), "kind": "tax.late_filing", "occurred_at": "2025-03-01"}
    ingest_rows(ws, "tax", [{"record_id": "A", **fine}], received_at=dt.datetime(2025, 4, 1))
    ws.score(dt.datetime(2025, 6, 1), dt.datetime(2025, 6, 1))
    ingest_rows(ws, "tax", [{"record_id": "B", **fine}], received_at=dt.datetime(2025, 6, 1, 12))
    t, k = dt.datetime(2025, 6, 2), dt.datetime(2025, 6, 2)
    update = ws.score_incremental(t, k, full_share=None)
    assert (update.method, update.records_reason, update.affected_subjects) == ("tallies", None, 1)
    assert_same_snapshot(ws.store.con, update.snapshot, ws.score(t, k))


def test_a_base_stored_without_tallies_is_brought_forward_from_the_records(ws: Any) -> None:
    """Snapshots written before the tallies existed have none: the plan reruns instead."""
    fine = {"subject_id": resident_id(4), "kind": "tax.late_filing", "occurred_at": "2025-03-01"}
    ingest_rows(ws, "tax", [{"record_id": "A", **fine}], received_at=dt.datetime(2025, 4, 1))
    base = ws.score(dt.datetime(2025, 6, 1), dt.datetime(2025, 6, 1))
    ws.store.con.execute(
        f"UPDATE {LINEAGE} SET tallied = NULL WHERE snapshot_id = ?", [base.snapshot_id]
    )
    ingest_rows(ws, "tax", [{"record_id": "B", **fine}], received_at=dt.datetime(2025, 6, 1, 12))
    t, k = dt.datetime(2025, 6, 2), dt.datetime(2025, 6, 2)
    update = ws.score_incremental(t, k, full_share=None)
    assert update.method == "records" and "without tallies" in str(update.records_reason)
    assert_same_snapshot(ws.store.con, update.snapshot, ws.score(t, k))


def test_lineage_records_the_base_and_the_subjects_rescored(ws: Any) -> None:
    ingest_rows(
        ws,
        "tax",
        [
            {
                "record_id": "A",
                "subject_id": resident_id(1),
                "kind": "tax.late_filing",
                "occurred_at": "2025-03-01",
            }
        ],
        received_at=dt.datetime(2025, 4, 1),
    )
    full = ws.score(dt.datetime(2025, 6, 1), dt.datetime(2025, 6, 1))
    update = ws.score_incremental(dt.datetime(2026, 6, 1), dt.datetime(2026, 6, 1), full_share=None)
    rows = ws.store.con.execute(
        f"SELECT snapshot_id, base_snapshot_id, affected_subjects, records_seen FROM {LINEAGE} "
        "ORDER BY snapshot_id"
    ).fetchall()
    # The record's P1Y validity ended between the two: one subject rescored.
    assert rows == [(full.snapshot_id, None, None, 1), (update.snapshot.snapshot_id, 1, 1, 1)]


def _three_taxpayers(ws: Any) -> None:
    """Three subjects, each with a late filing a month apart (P1Y validity): one stops counting
    on each of 2026-03-01, 2026-04-01 and 2026-05-01."""
    ingest_rows(
        ws,
        "tax",
        [
            {
                "record_id": f"L{i}",
                "subject_id": resident_id(i),
                "kind": "tax.late_filing",
                "occurred_at": f"2025-0{i + 2}-01",
            }
            for i in (1, 2, 3)
        ],
        received_at=dt.datetime(2025, 6, 1),
    )


def _stored_rows(con: duckdb.DuckDBPyConnection, snapshot_id: int) -> int:
    row = con.execute(
        "SELECT count(*) FROM snapshot_scores WHERE snapshot_id = ?", [snapshot_id]
    ).fetchall()
    return int(row[0][0])


def test_an_update_stores_only_the_subjects_it_rescored(ws: Any) -> None:
    _three_taxpayers(ws)
    k = dt.datetime(2026, 6, 1)
    full = ws.score(dt.datetime(2026, 2, 15), k)
    # A third of three subjects is over the share that consolidates a chain; not tested here.
    with patch.object(snapshots, "CONSOLIDATE_SHARE", 1.0):
        update = ws.score_incremental(dt.datetime(2026, 3, 15), k, full_share=None)
    con = ws.store.con
    new = update.snapshot.snapshot_id
    # One filing stopped counting: one subject rescored, the other two read from the base. Its
    # only record no longer counts, so it scores the base again and has no row of its own: the
    # delta names it, and a reader gives it the base's default row, not the base snapshot's.
    assert update.affected_subjects == 1 and _stored_rows(con, new) == 0
    assert con.execute(
        f"SELECT count(*) FROM {snapshots.AFFECTED} WHERE snapshot_id = ?", [new]
    ).fetchall() == [(1,)]
    assert _stored_rows(con, full.snapshot_id) == 3
    assert con.execute(f"SELECT * FROM {snapshots.DELTAS}").fetchall() == [
        (new, full.snapshot_id, 1, 1)
    ]
    assert update.snapshot.subjects == 3
    again = ws.score(dt.datetime(2026, 3, 15), k)
    assert_same_snapshot(con, update.snapshot, again)
    assert {**ws.stats(update.snapshot), "snapshot_id": 0} == {**ws.stats(again), "snapshot_id": 0}


def test_a_day_passing_takes_the_population_from_the_base_and_a_new_record_counts_it(
    ws: Any,
) -> None:
    """Nobody joins the population without a record received or dated since the base, so a day
    passing neither looks for nor counts it (passes over every subject's first records) when no
    benefit of the base's band reads it; a day that brings a new subject counts it, and both
    equal a full score."""
    _three_taxpayers(ws)
    k = dt.datetime(2026, 6, 1)
    base = ws.score(dt.datetime(2026, 2, 15), k)
    not_counted = AssertionError("the population was looked for")
    with (
        patch.object(duckdb_engine, "_count", side_effect=not_counted),
        patch.object(duckdb_engine, "population_sql", side_effect=not_counted),
    ):
        passing = ws.score_incremental(dt.datetime(2026, 3, 15), k, full_share=None)
    assert (passing.method, passing.base_snapshot_id) == ("tallies", base.snapshot_id)
    assert passing.snapshot.subjects == 3
    assert_same_snapshot(ws.store.con, passing.snapshot, ws.score(dt.datetime(2026, 3, 15), k))
    # A fourth taxpayer's first record, received after the base: the population is counted.
    ingest_rows(
        ws,
        "tax",
        [
            {
                "record_id": "L4",
                "subject_id": resident_id(4),
                "kind": "tax.late_filing",
                "occurred_at": "2026-03-20",
            }
        ],
        received_at=dt.datetime(2026, 6, 2),
    )
    k2 = dt.datetime(2026, 6, 3)
    joined = ws.score_incremental(dt.datetime(2026, 4, 15), k2, full_share=None)
    assert (joined.method, joined.snapshot.subjects) == ("tallies", 4)
    assert_same_snapshot(ws.store.con, joined.snapshot, ws.score(dt.datetime(2026, 4, 15), k2))


def test_the_operators_listing_history_reads_a_delta_through_its_base(ws: Any) -> None:
    """A debtor listed in the base and not rescored still counts in the delta's history."""
    from civiscore.web.data import _listing_history

    _three_taxpayers(ws)
    ingest_rows(
        ws,
        "courts",
        [
            {
                "record_id": "C1",
                "subject_id": resident_id(9),
                "kind": "court.judgment_default",
                "occurred_at": "2026-01-05T10:00:00",
                "reference": "J1",
            }
        ],
        received_at=dt.datetime(2026, 1, 6),
    )
    k = dt.datetime(2026, 6, 1)
    ws.score(dt.datetime(2026, 2, 15), k)
    with patch.object(snapshots, "CONSOLIDATE_SHARE", 1.0):
        update = ws.score_incremental(dt.datetime(2026, 3, 15), k, full_share=None)
    assert update.affected_subjects == 1  # a taxpayer; the debtor's rows stay in the base
    from_delta = _listing_history(ws.store.con)
    ws.score(dt.datetime(2026, 3, 15), k)  # now the latest snapshot at that moment
    from_full = _listing_history(ws.store.con)
    assert from_delta == from_full
    assert [n for at, _, n in from_delta if at == dt.datetime(2026, 3, 15)] == [1]


def test_a_chain_of_deltas_is_consolidated_at_its_depth_limit(ws: Any) -> None:
    _three_taxpayers(ws)
    k = dt.datetime(2026, 6, 1)
    previous = ws.score(dt.datetime(2026, 2, 15), k)
    depths = []
    with patch.object(snapshots, "MAX_DEPTH", 2), patch.object(snapshots, "CONSOLIDATE_SHARE", 1.0):
        for month in (3, 4, 5):
            update = ws.score_incremental(dt.datetime(2026, month, 15), k, full_share=None)
            assert update.base_snapshot_id == previous.snapshot_id
            members = snapshots.chain(ws.store.con, update.snapshot.snapshot_id)
            depths.append(len(members) - 1)
            previous = update.snapshot
    # Two deltas, then the third update writes every subject's rows and starts a new chain.
    assert depths == [1, 2, 0]
    again = ws.score(dt.datetime(2026, 5, 15), k)
    assert_same_snapshot(ws.store.con, previous, again)
    # Every filing has stopped counting: no subject's row differs from the base's default.
    assert _stored_rows(ws.store.con, previous.snapshot_id) == 0
    assert previous.subjects == again.subjects == 3


def test_a_chain_that_rescored_too_many_subjects_is_consolidated(ws: Any) -> None:
    _three_taxpayers(ws)
    k = dt.datetime(2026, 6, 1)
    ws.score(dt.datetime(2026, 2, 15), k)
    # One subject in three is over a share of 0.3: the update is stored in full.
    with patch.object(snapshots, "CONSOLIDATE_SHARE", 0.3):
        update = ws.score_incremental(dt.datetime(2026, 3, 15), k, full_share=None)
    assert update.affected_subjects == 1
    assert snapshots.chain(ws.store.con, update.snapshot.snapshot_id) == [
        update.snapshot.snapshot_id
    ]
    # Every subject's row that differs from the base's default: the two whose filings still
    # count (the third's stopped counting).
    assert _stored_rows(ws.store.con, update.snapshot.snapshot_id) == 2
    assert update.snapshot.subjects == 3


def test_without_a_snapshot_everyone_is_scored_and_the_reason_given(ws: Any) -> None:
    update = ws.score_incremental(dt.datetime(2025, 6, 1), dt.datetime(2025, 6, 1))
    assert update.base_snapshot_id is None and update.affected_subjects is None
    assert update.full_reason == "there is no snapshot to bring forward yet"


def test_going_back_in_time_scores_everyone(ws: Any) -> None:
    ws.score(dt.datetime(2025, 6, 1), dt.datetime(2025, 6, 1))
    earlier = ws.score_incremental(dt.datetime(2025, 5, 1), dt.datetime(2025, 6, 1))
    assert earlier.full_reason is not None and "only moves forward" in earlier.full_reason
    older = ws.score_incremental(dt.datetime(2025, 6, 2), dt.datetime(2025, 5, 1))
    assert older.full_reason is not None and "only adds records" in older.full_reason


def _next_version(folder: Path, effective_from: str = "2026-01-01") -> Path:
    """The demo rulebook as version 2026.2, in force from ``effective_from``."""
    text = demo_rulebook_path().read_text(encoding="utf-8")
    text = text.replace('version: "2026.1"', 'version: "2026.2"', 1)
    text = text.replace("effective_from: 2014-06-14", f"effective_from: {effective_from}", 1)
    path = folder / "rulebook-2026.2.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_new_rulebook_version_scores_everyone(ws: Any, tmp_path: Path) -> None:
    ws.score(dt.datetime(2025, 6, 1), dt.datetime(2025, 6, 1))
    registry.publish(ws.store, _next_version(tmp_path), now_local())
    update = ws.score_incremental(dt.datetime(2026, 2, 1), dt.datetime(2026, 2, 1))
    assert update.base_snapshot_id is None
    assert update.full_reason is not None
    assert "rulebook 2026.2 is in force" in update.full_reason
    assert "scored under 2026.1" in update.full_reason


def test_when_most_subjects_changed_everyone_is_scored_and_the_reason_given(ws: Any) -> None:
    """Same rows either way; past a share of the population a full score is as fast."""
    for n in range(1, 5):
        rec = _rec(f"L{n}", "tax.late_filing", "2025-03-01T08:00")
        _load(ws, [{**rec, "subject_id": resident_id(n)}], RECEIVED[0])
    base = ws.score(dt.datetime(2025, 6, 1), RECEIVED[0])
    late = {**_rec("L9", "tax.late_filing", "2025-04-01T08:00"), "subject_id": resident_id(1)}
    _load(ws, [late], RECEIVED[1])
    one = ws.score_incremental(dt.datetime(2025, 6, 1), RECEIVED[1])  # 1 of 4: 25 %
    assert (one.base_snapshot_id, one.affected_subjects) == (base.snapshot_id, 1)
    # All four validity windows end by 2026-03-02: 4 of 4 affected.
    everyone = ws.score_incremental(dt.datetime(2026, 3, 2), RECEIVED[1])
    assert everyone.base_snapshot_id is None
    assert everyone.full_reason == (
        f"4 of the 4 subjects of snapshot {one.snapshot.snapshot_id} (100 %) have changes "
        "since it, more than 25 %; a full score is as fast"
    )


@pytest.mark.parametrize("months", [0, 1, 2, 6, 12, 18, 24, 36, 60])
@pytest.mark.parametrize("days", [0, 1, 180])
def test_shift_bounds_hold_for_every_day_of_a_century(months: int, days: int) -> None:
    """The cheap occurred_at window of cases (b) and (c) never drops a record whose clock ends
    in the interval: DuckDB's own calendar arithmetic stays within :func:`shift_days`."""
    lo, hi = incremental.shift_days(months, days)
    shift = duckdb.sql(
        f"""SELECT min(date_diff('day', x, x + to_months({months}) + to_days({days}))),
                  max(date_diff('day', x, x + to_months({months}) + to_days({days})))
        FROM (SELECT unnest(generate_series(TIMESTAMP '1999-01-01 23:59:59',
                                            TIMESTAMP '2101-12-31', INTERVAL 1 DAY)) AS x)"""
    ).fetchall()[0]
    assert lo <= shift[0] and shift[1] <= hi


def test_doctests() -> None:
    for module in (incremental, plan, tallies):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


# -- the command line ---------------------------------------------------------------------------

runner = CliRunner(
    env={"CIVISCORE_HOME": None, "CIVISCORE_KEY_FILE": None, "COLUMNS": "200"},
)


def invoke(home: Path, *args: str) -> Result:
    result = runner.invoke(app, ["--home", str(home), *args])
    return result


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def cli_home(tmp_path: Path) -> Path:
    """Five residents with a late tax filing on 1 March 2025; the first has another in 2024."""
    home = tmp_path / "home"
    ok(invoke(home, "init"))
    rows = [
        {
            "record_id": f"T{n}",
            "subject_id": resident_id(n),
            "kind": "tax.late_filing",
            "occurred_at": "2025-03-01",
        }
        for n in range(1, 6)
    ]
    rows.append({**rows[0], "record_id": "T0", "occurred_at": "2024-07-01"})
    ok(invoke(home, "ingest", "--department", "tax", str(write_csv(tmp_path / "tax.csv", rows))))
    return home


def test_cli_incremental_without_a_snapshot_scores_everyone_and_says_so(cli_home: Path) -> None:
    result = ok(invoke(cli_home, "score", "--incremental", "--at", "2025-06-01"))
    assert "scored the whole population: there is no snapshot to bring forward yet" in flat(
        result.stderr
    )
    assert "snapshot 1: 5 subjects scored" in flat(result.stdout)


def test_cli_incremental_brings_the_latest_snapshot_forward(cli_home: Path) -> None:
    first = json.loads(ok(invoke(cli_home, "score", "--at", "2025-06-01", "--json")).stdout)
    result = ok(invoke(cli_home, "score", "--incremental", "--at", "2025-06-02", "--json"))
    data = json.loads(result.stdout)
    assert data["base_snapshot_id"] == first["snapshot_id"]
    assert data["rescored_subjects"] == 0  # nothing happened on 2 June
    assert data["full_score_reason"] is None
    assert (data["method"], data["records_reason"]) == ("tallies", None)
    assert data["subjects"] == 5
    assert result.stderr == ""
    # The first resident's 2024 filing stops counting on 1 July 2025.
    text = ok(invoke(cli_home, "score", "--incremental", "--at", "2025-07-01")).stdout
    assert (
        f"brought forward from snapshot {data['snapshot_id']}: 1 subjects rescored by tallies "
        "of the changed records" in flat(text)
    )


def test_cli_says_when_a_stores_first_update_sorts_its_records(cli_home: Path) -> None:
    """The first update of a store builds its records by occurrence (about 50 s at Beijing's
    size): said once, on stderr; not before there is a snapshot to bring forward."""
    note = "first daily update also sorts its records by occurrence, once"
    scored = ok(invoke(cli_home, "score", "--incremental", "--at", "2025-06-01"))
    assert note not in flat(scored.stderr)  # no snapshot yet: everyone is scored
    first = ok(invoke(cli_home, "score", "--incremental", "--at", "2025-06-02"))
    assert note in flat(first.stderr)
    again = ok(invoke(cli_home, "score", "--incremental", "--at", "2025-06-03"))
    assert note not in flat(again.stderr)


def test_cli_incremental_after_a_rulebook_change_scores_everyone_and_says_so(
    cli_home: Path, tmp_path: Path
) -> None:
    ok(invoke(cli_home, "score", "--at", "2025-06-01"))
    ok(invoke(cli_home, "init", "--rulebook", str(_next_version(tmp_path))))
    result = ok(invoke(cli_home, "score", "--incremental", "--at", "2026-02-01", "--json"))
    data = json.loads(result.stdout)
    assert data["base_snapshot_id"] is None and data["rescored_subjects"] is None
    assert data["rulebook_version"] == "2026.2"
    assert "rulebook 2026.2 is in force" in data["full_score_reason"]
    assert "scored the whole population: rulebook 2026.2 is in force" in flat(result.stderr)
