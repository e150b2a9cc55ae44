"""Invariants users rely on, checked over generated record histories (hypothesis)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from civiscore.workspace import Workspace
from tests.utils import ingest_rows, org_id, resident_id

KINDS: dict[str, list[tuple[str, str]]] = {
    "transport": [
        ("transport.speeding", "q"),
        ("transport.drunk_driving", ""),
        ("transport.fare_evasion", ""),
    ],
    "courts": [("court.judgment_default", "r"), ("court.judgment_settled", "r")],
    "civil_affairs": [("civic.volunteer_hours", "q"), ("civic.heroic_act", "")],
    "blood_service": [("civic.blood_donation", "")],
    "tax": [("tax.late_filing", ""), ("tax.evasion_decision", "r")],
}
START = dt.datetime(2022, 1, 1)
SPAN_DAYS = 4 * 365

PROFILE = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@st.composite
def histories(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Records for three residents over four years, with retractions and settlements."""
    n = draw(st.integers(min_value=0, max_value=25))
    rows: list[dict[str, Any]] = []
    for i in range(n):
        dep = draw(st.sampled_from(sorted(KINDS)))
        kind, extra = draw(st.sampled_from(KINDS[dep]))
        when = START + dt.timedelta(
            days=draw(st.integers(0, SPAN_DAYS)), hours=draw(st.integers(0, 23))
        )
        row: dict[str, Any] = {
            "department": dep,
            "record_id": f"R{i}",
            "subject_id": resident_id(draw(st.integers(1, 3))),
            "kind": kind,
            "occurred_at": when.isoformat(),
        }
        if "q" in extra:
            row["quantity"] = draw(st.integers(0, 80))
        if "r" in extra:
            row["reference"] = f"J{draw(st.integers(1, 3))}"
        rows.append(row)
    # Retract some earlier records of the same department and subject.
    for j, target in enumerate(draw(st.lists(st.sampled_from(rows), max_size=3)) if rows else []):
        later = dt.datetime.fromisoformat(target["occurred_at"]) + dt.timedelta(days=10)
        rows.append(
            {
                **target,
                "record_id": f"X{j}",
                "retracts": target["record_id"],
                "occurred_at": later.isoformat(),
            }
        )
    return rows


def _load(ws: Workspace, rows: list[dict[str, Any]], received: dt.datetime) -> None:
    by_dep: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_dep.setdefault(r["department"], []).append(
            {k: v for k, v in r.items() if k != "department"}
        )
    for dep, dep_rows in by_dep.items():
        s = ingest_rows(ws, dep, dep_rows, received_at=received)
        assert s.rejected == 0, s.as_dict()


def _fresh(tmp_path_factory: Any) -> Workspace:
    ws, _ = Workspace.init(Path(tmp_path_factory.mktemp("home")))
    return ws


moments = st.integers(0, SPAN_DAYS + 800).map(lambda d: START + dt.timedelta(days=d, hours=12))
RECEIVED = dt.datetime(2030, 1, 1)


@PROFILE
@given(rows=histories(), at=moments)
def test_score_is_base_plus_explanation_lines_and_matches_snapshot(
    tmp_path_factory: Any, rows: list[dict[str, Any]], at: dt.datetime
) -> None:
    ws = _fresh(tmp_path_factory)
    try:
        _load(ws, rows, RECEIVED)
        snap = ws.score(at, RECEIVED)
        snapshot_scores = dict(
            ws.store.con.execute(
                "SELECT sid, score FROM snapshot_scores WHERE snapshot_id = ?", [snap.snapshot_id]
            ).fetchall()
        )
        for n in (1, 2, 3):
            raw = resident_id(n)
            x = ws.explain(raw, at, RECEIVED)
            assert x.score == x.base + sum((line.points for line in x.lines), Decimal(0))
            assert x.contexts == _by_context(x)
            sid = ws.sid_of(raw)
            if sid is not None and sid in snapshot_scores:
                assert snapshot_scores[sid] == x.score
            else:
                # A snapshot leaves out the rows at the base's default (plan._scores_sql).
                assert x.score == x.base and not x.band_capped_by_grave_sanction
            # A record either counts (a line) or is explained as not counting, never both.
            counted = {line.record_id for line in x.lines}
            assert counted.isdisjoint({nc.record_id for nc in x.not_counted})
            # Every counted line is within its validity window at T.
            assert all(line.counts_until is None or line.counts_until > at for line in x.lines)
    finally:
        ws.close()


def _by_context(x: Any) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for line in x.lines:
        out[line.context] = out.get(line.context, Decimal(0)) + line.points
    return out


@PROFILE
@given(rows=histories(), repeats=st.integers(2, 3))
def test_reingest_is_idempotent(
    tmp_path_factory: Any, rows: list[dict[str, Any]], repeats: int
) -> None:
    ws = _fresh(tmp_path_factory)
    try:
        for _ in range(repeats):
            _load(ws, rows, RECEIVED)
        stored = ws.store.con.execute("SELECT count(*) FROM records").fetchall()[0][0]
        distinct = ws.store.con.execute(
            "SELECT count(DISTINCT (department, record_id)) FROM records"
        ).fetchall()[0][0]
        assert stored == distinct == len(rows)
    finally:
        ws.close()


@PROFILE
@given(rows=histories(), at=moments, cut=st.integers(0, 25))
def test_as_of_known_at_is_reproducible_after_later_records(
    tmp_path_factory: Any, rows: list[dict[str, Any]], at: dt.datetime, cut: int
) -> None:
    """What was known at K never changes when records arrive after K."""
    ws = _fresh(tmp_path_factory)
    try:
        first, later = rows[:cut], rows[cut:]
        k1, k2 = dt.datetime(2029, 1, 1), dt.datetime(2029, 6, 1)
        _load(ws, first, k1)
        before = [ws.explain(resident_id(n), at, k1).model_dump() for n in (1, 2, 3)]
        _load(ws, later, k2)
        after = [ws.explain(resident_id(n), at, k1).model_dump() for n in (1, 2, 3)]
        assert before == after
    finally:
        ws.close()


@PROFILE
@given(days=st.integers(-3, 3), seconds=st.sampled_from([-1, 0, 1]))
def test_expiry_boundary_is_exact(tmp_path_factory: Any, days: int, seconds: int) -> None:
    """A record counts while T < occurred_at + valid_for, and not from that instant on."""
    ws = _fresh(tmp_path_factory)
    try:
        occurred = dt.datetime(2024, 2, 29, 8, 30)
        ingest_rows(
            ws,
            "transport",
            [
                {
                    "record_id": "D1",
                    "subject_id": resident_id(7),
                    "kind": "transport.drunk_driving",
                    "occurred_at": occurred.isoformat(),
                }
            ],
            received_at=RECEIVED,
        )
        until = dt.datetime(2027, 2, 28, 8, 30)  # P3Y from 29 February clamps to 28 February
        at = until + dt.timedelta(days=days, seconds=seconds)
        x = ws.explain(resident_id(7), at, RECEIVED)
        assert (x.score == Decimal(950)) == (at < until)
        assert (x.score == Decimal(1000)) == (at >= until)
    finally:
        ws.close()


@PROFILE
@given(n_merits=st.integers(0, 40), hours=st.integers(1, 40))
def test_merits_never_lift_a_grave_sanction(
    tmp_path_factory: Any, n_merits: int, hours: int
) -> None:
    ws = _fresh(tmp_path_factory)
    try:
        raw = org_id(3) if False else resident_id(11)
        merits = [
            {
                "record_id": f"V{i}",
                "subject_id": raw,
                "kind": "civic.volunteer_hours",
                "occurred_at": (dt.datetime(2024, 1, 1) + dt.timedelta(days=9 * i)).isoformat(),
                "quantity": hours,
            }
            for i in range(n_merits)
        ]
        if merits:
            ingest_rows(ws, "civil_affairs", merits, received_at=RECEIVED)
        ingest_rows(
            ws,
            "courts",
            [
                {
                    "record_id": "C1",
                    "subject_id": raw,
                    "kind": "court.judgment_default",
                    "occurred_at": "2024-06-01",
                    "reference": "J",
                }
            ],
            received_at=RECEIVED,
        )
        at = dt.datetime(2025, 1, 1)
        x = ws.explain(raw, at, RECEIVED)
        assert not x.band.startswith("A")
        assert x.benefits == []
        assert not ws.check(raw, "high_speed_rail", at, RECEIVED).allowed
        assert not ws.check(raw, "deposit_free_rental", at, RECEIVED).allowed
    finally:
        ws.close()


@PROFILE
@given(rows=histories(), at=moments, data=st.data())
def test_a_retracted_record_is_as_if_it_never_existed(
    tmp_path_factory: Any, rows: list[dict[str, Any]], at: dt.datetime, data: st.DataObject
) -> None:
    """Once a retraction is known, every answer equals the one without the retracted record."""
    plain = [r for r in rows if "retracts" not in r]
    withdrawn = (
        data.draw(st.lists(st.sampled_from(plain), unique_by=lambda r: r["record_id"]))
        if plain
        else []
    )
    retractions = [
        {**r, "record_id": f"W{r['record_id']}", "retracts": r["record_id"]} for r in withdrawn
    ]
    kept = [r for r in plain if r not in withdrawn]
    a, b = _fresh(tmp_path_factory), _fresh(tmp_path_factory)
    try:
        _load(a, plain + retractions, RECEIVED)
        _load(b, kept, RECEIVED)
        for n in (1, 2, 3):
            xa, xb = (w.explain(resident_id(n), at, RECEIVED) for w in (a, b))
            assert (xa.score, xa.band, xa.contexts) == (xb.score, xb.band, xb.contexts)
            assert [line.record_id for line in xa.lines] == [line.record_id for line in xb.lines]
            assert [x.listing for x in xa.listings] == [x.listing for x in xb.listings]
    finally:
        a.close()
        b.close()


_CON = None


def _duckdb() -> Any:
    global _CON
    if _CON is None:
        import duckdb

        _CON = duckdb.connect()
    return _CON


@settings(max_examples=1000, deadline=None)
@given(
    months=st.sampled_from([0, 1, 2, 6, 12, 24, 36]),
    days=st.sampled_from([0, 1, 3, 30, 180]),
    year=st.integers(min_value=2001, max_value=2040),
    month=st.integers(min_value=1, max_value=12),
    back=st.integers(min_value=0, max_value=40),
    seconds=st.integers(min_value=0, max_value=86_399),
    # Mostly within days of the threshold, where a month's end clamps dates out of order.
    offset=st.one_of(
        st.integers(min_value=-6 * 86_400, max_value=6 * 86_400),
        st.integers(min_value=-40 * 86_400, max_value=40 * 86_400),
    ),
)
# T = 2023-02-28 12:00 under P1M: 29 January 01:00 lands on 28 February 01:00 and does not
# count, though 28 January 12:00:00.000001 does; and 31 January 13:00 counts.
@example(months=1, days=0, year=2023, month=2, back=9, seconds=43_200, offset=46_800)
@example(months=1, days=0, year=2023, month=2, back=9, seconds=43_200, offset=3 * 86_400 + 3_600)
@example(months=6, days=3, year=2024, month=2, back=9, seconds=3_600, offset=-2 * 86_400)
def test_count_bounds_agree_with_the_engines_calendar(
    months: int, days: int, year: int, month: int, back: int, seconds: int, offset: int
) -> None:
    """A record before ``count_maybe`` never counts at T and one from ``count_sure`` always does,
    by DuckDB's own calendar arithmetic; between them the plan tests it exactly."""
    from civiscore.engine.plan import _COUNT_MARGIN, count_from
    from civiscore.rulebook.model import Duration

    if months == 0 and days == 0:
        days = 1
    # T on a month's last days (most often its very last), at any time of day.
    first_of_next = dt.datetime(year + month // 12, month % 12 + 1, 1)
    at = first_of_next - dt.timedelta(days=1 + (back if back < 4 else 0), seconds=-seconds)
    d = Duration(months=months, days=days, text=f"P{months}M{days}D")
    start = count_from(d, at)
    assert start is not None
    x = start + dt.timedelta(seconds=offset)
    counts = (
        _duckdb()
        .execute(f"SELECT $x + to_months({months}) + to_days({days}) > $at", {"x": x, "at": at})
        .fetchall()[0][0]
    )
    assert counts == (d.add_to(x) > at)  # Python's calendar is the engine's
    if x >= start + _COUNT_MARGIN:
        assert counts
    if x < start - _COUNT_MARGIN:
        assert not counts


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(order=st.permutations(["F1", "F2", "F3", "F4"]))
def test_records_at_the_same_moment_name_the_same_record_whatever_the_order(
    tmp_path_factory: Any, order: list[str]
) -> None:
    """Three fare evasions within a year list a rail fare evader. When the latest two occurred at
    the same moment, the listing names the same one (the last by record_id) however the records
    were stored; it once named whichever the engine met first, so a full score and an update,
    or DuckDB and Spark, could disagree."""
    moments = {
        "F1": "2026-03-01T08:00:00",
        "F2": "2026-04-01T08:00:00",
        "F3": "2026-05-01T08:00:00",
        "F4": "2026-05-01T08:00:00",
    }
    ws = _fresh(tmp_path_factory)
    try:
        for record_id in order:  # one file each, so each is stored in the drawn order
            ingest_rows(
                ws,
                "transport",
                [
                    {
                        "record_id": record_id,
                        "subject_id": resident_id(5),
                        "kind": "transport.fare_evasion",
                        "occurred_at": moments[record_id],
                    }
                ],
                received_at=dt.datetime(2026, 6, 1),
            )
        snap = ws.score(dt.datetime(2026, 6, 1), dt.datetime(2026, 6, 1))
        named = ws.store.con.execute(
            "SELECT record_id FROM snapshot_listings WHERE snapshot_id = ? "
            "AND listing = 'rail_fare_evader'",
            [snap.snapshot_id],
        ).fetchall()
        assert named == [("F4",)]
    finally:
        ws.close()
