"""The Spark engine: the DuckDB engine's snapshot, row for row, from the same plan.

A synthetic city is ingested into a DuckDB store in stages (each department's records on its
own day, retractions weeks later), scored by the DuckDB engine at several (T, K), exported to
Parquet and scored by the Spark engine at the same (T, K); every row of the scores, contexts
and listings must be equal. The translation rewrites in :mod:`civiscore.engine.dialect` are
checked one by one, each by running the same DuckDB SQL in both engines.

Needs pyspark, sqlglot and Java 17+ (``pip install -e '.[spark]'``); skipped with the reason
when they are missing, unless ``CIVISCORE_REQUIRE_SPARK=1`` (CI sets it), where that is a
failure. One Spark session (``spark`` in conftest.py) serves the whole test session: starting it
is most of the time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from civiscore.engine.incremental import SNAPSHOT_TABLES
from civiscore.ingest.readers import FIELDS, open_file, read_batches
from civiscore.rulebook.model import Rulebook
from civiscore.store import firsts as firsts_sql
from civiscore.synth.city import DEFAULT_END, write_city
from civiscore.workspace import Workspace
from tests.utils import resident_id, write_csv

# Without pyspark or sqlglot these imports fail; every test then stops at the spark_available
# fixture, skipped with the reason (or failed, in CI), rather than the whole run at collection.
with contextlib.suppress(ImportError):
    from pyspark.sql import SparkSession

    from civiscore.engine.dialect import UnportableSQL, to_spark
    from civiscore.engine.spark_engine import (
        POPULATION,
        SNAPSHOT_SCHEMAS,
        WITHDRAWN_SINCE,
        SparkEngine,
        SparkInputError,
        export_store,
        write_snapshot,
    )

pytestmark = [pytest.mark.spark, pytest.mark.usefixtures("spark_available")]

RESIDENTS = 2_000
YEARS = 5
# Each department's records reach the store on its own morning; every retraction later.
FIRST_ARRIVAL = dt.datetime(2026, 11, 2, 9, 0)
RETRACTIONS_ARRIVE = dt.datetime(2026, 11, 30, 9, 0)
END = dt.datetime.combine(DEFAULT_END, dt.time.max)
QUESTIONS = {
    "now, everything known": (END, dt.datetime(2026, 12, 31)),
    "two years earlier, before the retractions": (
        dt.datetime(2024, 10, 31, 23, 59, 59, 999999),
        RETRACTIONS_ARRIVE - dt.timedelta(microseconds=1),
    ),
    "now, three departments known": (END, FIRST_ARRIVAL + dt.timedelta(days=2, hours=1)),
    # The instant the retractions are received: from it on they withdraw what they name.
    "now, the retractions just known": (END, RETRACTIONS_ARRIVE),
}

SNAPSHOT_SQL = {
    "scores": "SELECT sid, score, band, band_capped FROM snapshot_scores WHERE snapshot_id = ?",
    "contexts": (
        "SELECT sid, context, points, records FROM snapshot_contexts WHERE snapshot_id = ?"
    ),
    "listings": (
        "SELECT sid, listing, list, since, until, record_id, department, reference "
        "FROM snapshot_listings WHERE snapshot_id = ?"
    ),
    "caps": (
        "SELECT sid, rule_no, cap_year, total, records FROM snapshot_caps WHERE snapshot_id = ?"
    ),
}


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    """A 2,000-resident city over 5 years, ingested department by department.

    Each department's records arrive on their own morning and every retraction weeks later,
    so a K in between sees some departments and no retractions. One crafted resident, a
    volunteer and hero (1,120 points) with an unpaid judgment (-100), has a grave sanction
    capping an A band to B: about one subject in 7,000 in the synthetic city, so usually none
    in 2,000.
    """
    root = tmp_path_factory.mktemp("spark-city")
    files = write_city(root / "city", residents=RESIDENTS, years=YEARS, seed=7, bad_rows=0.0)
    ws, _ = Workspace.init(root / "home")
    late = []
    for day, (department, path) in enumerate(sorted(files.departments.items())):
        raw = pa.concat_tables(list(read_batches(open_file(path))))
        # A Parquet file's numeric quantity is read as a number, beside the text columns.
        quantity = pc.coalesce(
            raw.column("quantity"), raw.column("quantity_value").cast(pa.string())
        )
        rows = raw.set_column(raw.schema.get_field_index("quantity"), "quantity", quantity)
        rows = rows.select(list(FIELDS))
        text = pc.utf8_trim_whitespace(rows.column("retracts"))
        retracting = pc.fill_null(pc.not_equal(text, ""), False)
        first = root / f"{department}-first.parquet"
        pq.write_table(rows.filter(pc.invert(retracting)), first)
        arrival = FIRST_ARRIVAL + dt.timedelta(days=day)
        assert ws.ingest(department, first, received_at=arrival).rejected == 0
        late.append((department, rows.filter(retracting)))
    for department, rows in late:
        second = root / f"{department}-retractions.parquet"
        pq.write_table(rows, second)
        assert ws.ingest(department, second, received_at=RETRACTIONS_ARRIVE).rejected == 0
    hero = resident_id(1, region="310101")  # Shanghai: no synthetic resident has this ID
    merits = [
        ("civic.volunteer_hours", f"{y}-{m:02d}-01", "25") for y in (2025, 2026) for m in (3, 4, 5)
    ]
    merits += [("civic.heroic_act", f"{y}-06-01", "") for y in (2025, 2026)]
    crafted = {
        "civil_affairs": [
            {
                "record_id": f"X-{i}",
                "subject_id": hero,
                "kind": kind,
                "occurred_at": f"{day}T10:00:00",
                "quantity": quantity,
            }
            for i, (kind, day, quantity) in enumerate(merits)
        ],
        "courts": [
            {
                "record_id": "X-J",
                "subject_id": hero,
                "kind": "court.judgment_default",
                "occurred_at": "2026-09-01T10:00:00",
                "reference": "(2026) X 1",
            }
        ],
    }
    for department, crafted_rows in crafted.items():
        path = write_csv(root / f"{department}-crafted.csv", crafted_rows)
        assert ws.ingest(department, path, received_at=FIRST_ARRIVAL).rejected == 0
    yield ws
    ws.close()


Rows = dict[str, list[tuple[Any, ...]]]


@pytest.fixture(scope="module")
def exported(city: Workspace, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The city's records, subjects and first records as ``export_store`` writes them."""
    records, subjects, firsts = export_store(city.store.con, tmp_path_factory.mktemp("parquet"))
    assert firsts is not None
    return records, subjects, firsts


@pytest.fixture(scope="module")
def lake_records(
    exported: tuple[Path, Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The exported records without ``withdrawn_since``, as a data lake's own records may be."""
    out = tmp_path_factory.mktemp("lake") / "records.parquet"
    duckdb.execute(
        f"COPY (SELECT * EXCLUDE ({WITHDRAWN_SINCE}) FROM read_parquet('{exported[0]}/*.parquet'))"
        f" TO '{out}' (FORMAT parquet)"
    )
    return out


@pytest.fixture(scope="module", params=["exported", "records without withdrawn_since"])
def answers(
    request: pytest.FixtureRequest,
    city: Workspace,
    spark: SparkSession,
    exported: tuple[Path, Path, Path],
    lake_records: Path,
) -> dict[str, tuple[Rows, Rows]]:
    """For each question: the DuckDB snapshot's rows and the Spark engine's, each sorted; the
    Spark engine reads the records as exported, or without the column that spares it the join
    on their ids (see the broadcast test)."""
    records, subjects, firsts = exported
    if request.param != "exported":
        records = lake_records
    engine = SparkEngine(spark, records, subjects, firsts)
    out = {}
    for question, (at, known) in QUESTIONS.items():
        snap = city.score(at, known)
        frames = engine.score_frames(city.rulebook_at(at), at, known)
        try:
            # The scores leave out the members at the base's default: both engines count the
            # population alike.
            population = frames.pop(POPULATION)
            assert population.collect() == [(snap.subjects,)], question
            assert population.schema.simpleString() == "struct<subjects:bigint>"
            want = {
                name: _sorted(city.store.con.execute(sql, [snap.snapshot_id]).fetchall())
                for name, sql in SNAPSHOT_SQL.items()
            }
            got = {
                name: _sorted([tuple(r) for r in frame.collect()]) for name, frame in frames.items()
            }
            for name, frame in frames.items():
                assert frame.schema.simpleString() == _struct(name), name
        finally:
            engine.release()
        out[question] = (want, got)
    return out


def _sorted(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return sorted(rows, key=repr)


def _struct(name: str) -> str:
    fields = ",".join(f"{c}:{t.simpleString()}" for c, t in SNAPSHOT_SCHEMAS[name].items())
    return f"struct<{fields}>"


# -- the engine ---------------------------------------------------------------------------------


@pytest.mark.parametrize("question", list(QUESTIONS))
@pytest.mark.parametrize("table", list(SNAPSHOT_SQL))
def test_same_snapshot_as_duckdb(
    question: str, table: str, answers: dict[str, tuple[Rows, Rows]]
) -> None:
    want, got = (rows[table] for rows in answers[question])
    assert len(got) == len(want)
    difference = next(((w, g) for w, g in zip(want, got, strict=True) if w != g), None)
    assert difference is None, f"first difference (DuckDB, Spark): {difference}"
    # Equal decimals can differ in scale (Decimal('1.5') == Decimal('1.50')): compare the text.
    assert [str(r) for r in got] == [str(r) for r in want]


T = TypeVar("T")


def _both_engines(
    city: Workspace,
    spark: SparkSession,
    exported: tuple[Path, Path, Path],
    rb: Rulebook,
    ask: Callable[[duckdb.DuckDBPyConnection], T],
) -> tuple[dict[str, list[tuple[Any, ...]]], T]:
    """The snapshot tables of a variant rulebook "now, everything known", from both engines
    (asserted equal), and what ``ask`` finds among the DuckDB engine's stages."""
    from civiscore.engine.spark_engine import SNAPSHOT_SQL as FRESH

    at, known = QUESTIONS["now, everything known"]
    engine = SparkEngine(spark, *exported)
    try:
        frames = engine.score_frames(rb, at, known)
        got = {name: _sorted([tuple(r) for r in frames[name].collect()]) for name in FRESH}
    finally:
        engine.release()
    cur = city.engine.evaluate(rb, at, known)
    try:
        want = {name: _sorted(cur.execute(sql).fetchall()) for name, sql in FRESH.items()}
        asked = ask(cur)
    finally:
        cur.close()
    assert {n: [str(r) for r in rows] for n, rows in got.items()} == {
        n: [str(r) for r in rows] for n, rows in want.items()
    }
    return want, asked


def test_benefits_of_the_base_band_as_duckdb(
    city: Workspace, spark: SparkSession, exported: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """With a band benefit for the base's band, the members without a score row (the plan's
    ``population`` less its ``scores``) are granted it by both engines alike."""
    from civiscore.rulebook.load import demo_rulebook_path, load

    text = demo_rulebook_path().read_text(encoding="utf-8")
    variant = tmp_path / "green-for-a.yaml"
    variant.write_text(text.replace("trigger: {band: [AAA, AA]}", "trigger: {band: [AAA, AA, A]}"))
    want, population = _both_engines(
        city,
        spark,
        exported,
        load(variant),
        lambda cur: int(cur.execute("SELECT count(*) FROM population").fetchall()[0][0]),
    )
    scored = {r[0] for r in want["scores"]}
    green = {r[0] for r in want["listings"] if r[1] == "green_channel"}
    # Most of the city has no score row (no counting record) and is granted by the default.
    assert len(green - scored) > population // 10


def test_redlists_withheld_under_a_grave_sanction_as_duckdb(
    city: Workspace, spark: SparkSession, exported: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    """With a decision- and a conduct-triggered redlist, both engines list the same subjects,
    and withhold both from those under a grave sanction (the city has some of each)."""
    from civiscore.rulebook.load import load
    from tests.test_redlists import with_redlists

    def triggered(cur: duckdb.DuckDBPyConnection) -> tuple[set[int], set[int]]:
        """Subjects a redlist's trigger lists, apart from and under a grave sanction."""
        found = cur.execute(
            """SELECT d.sid, d.sid IN (SELECT sid FROM scores WHERE grave_active)
            FROM (SELECT sid FROM decision_listings WHERE list = 'redlist'
                  UNION SELECT sid FROM conduct_listings WHERE list = 'redlist') d"""
        ).fetchall()
        return {sid for sid, grave in found if not grave}, {sid for sid, grave in found if grave}

    want, (free, withheld) = _both_engines(
        city, spark, exported, load(with_redlists(tmp_path)), triggered
    )
    redlisted = {r[0] for r in want["listings"] if r[1] in ("volunteer", "regular_donor")}
    assert free and withheld, "the city should have redlisted subjects under a sanction"
    assert redlisted == free and not redlisted & withheld


def test_withdrawn_records_are_dropped_by_a_filter_not_a_join(
    city: Workspace, spark: SparkSession, exported: tuple[Path, Path, Path]
) -> None:
    """With the exported ``withdrawn_since``, ``live`` is a scan of the records and nothing
    more: no join of their ids (at Beijing's size the join made the scan 2.75 times as slow)."""
    records, subjects, _ = exported
    engine = SparkEngine(spark, records, subjects)
    try:
        at, known = QUESTIONS[next(iter(QUESTIONS))]
        session = engine.evaluate(city.rulebook_at(at), at, known)
        plan = str(session.sql("EXPLAIN SELECT * FROM live").collect()[0][0])
        assert "Join" not in plan, plan
        assert WITHDRAWN_SINCE in plan, plan
    finally:
        engine.release()


def test_the_retractions_are_broadcast_not_shuffled_against_every_record(
    city: Workspace, spark: SparkSession, exported: tuple[Path, Path, Path], lake_records: Path
) -> None:
    """Records without ``withdrawn_since`` are matched against the retractions by a join. A
    small computed stage is joined by broadcast whatever Spark's own size threshold says: at
    Beijing's size the million retractions were above it, and the anti-join shuffled and
    sorted every record against them. Here Spark's threshold is off altogether."""
    engine = SparkEngine(spark, lake_records, exported[1])
    before = spark.conf.get("spark.sql.autoBroadcastJoinThreshold")
    spark.conf.set("spark.sql.autoBroadcastJoinThreshold", "-1")
    try:
        at, known = QUESTIONS[next(iter(QUESTIONS))]
        session = engine.evaluate(city.rulebook_at(at), at, known)
        plan = str(session.sql("EXPLAIN SELECT * FROM live").collect()[0][0])
        # ``live`` reads the records and drops the withdrawn ones by a join on their keys.
        assert "BroadcastHashJoin [sid" in plan, plan
        assert "SortMergeJoin" not in plan, plan
    finally:
        engine.release()
        spark.conf.set("spark.sql.autoBroadcastJoinThreshold", str(before))


def test_the_matches_are_shuffled_once_by_subject(
    city: Workspace, spark: SparkSession, exported: tuple[Path, Path, Path]
) -> None:
    """The matches are moved to their subject's partition once (those of capped rules and the
    others apart, each read for its own aggregation); the sums per subject, rule and year, per
    subject and context, and per subject (the totals ``scores`` reads) then need no shuffle of
    their own. Uncached, so that the plan shows every step from the records."""
    records, subjects, _ = exported
    engine = SparkEngine(spark, records, subjects, cache=False)
    before = spark.conf.get("spark.sql.shuffle.partitions")
    spark.conf.set("spark.sql.shuffle.partitions", "3")  # the tests' one would hide the point
    try:
        at, known = QUESTIONS[next(iter(QUESTIONS))]
        session = engine.evaluate(city.rulebook_at(at), at, known)
        for sql in ("SELECT * FROM points", "SELECT sid, sum(points) FROM points GROUP BY sid"):
            plan = str(session.sql(f"EXPLAIN {sql}").collect()[0][0])
            shuffles = [line for line in plan.splitlines() if re.search(r"\bExchange ", line)]
            assert len(shuffles) == 2, plan
            for shuffle in shuffles:
                assert "Exchange hashpartitioning(sid#" in shuffle, plan
                assert ", 3), REPARTITION_BY_NUM" in shuffle, plan
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", str(before))


def test_the_population_from_first_records_as_the_duckdb_engine_finds_it(
    spark: SparkSession, tmp_path: Path
) -> None:
    """With the store's first records exported, Spark finds the population from them (not from
    the distinct subjects of every record); a subject both of whose first records straddle (T,
    K) in opposite ways is decided by its other records, as in the DuckDB engine. Without them,
    from every record: the same population either way."""
    ws, _ = Workspace.init(tmp_path / "home")
    try:
        # (record, subject, occurred, received). Subjects 1 and 2 each have a record that
        # occurred first but arrived late and one that arrived first but occurred late: at
        # (T, K) below neither places them. Subject 2 also has a record within (T, K); subject 1
        # has none. Subject 3 is in by its first record, subject 4 out (it arrived after K).
        rows = [
            (1, 1, "2020-01-01", "2026-01-10"),
            (2, 1, "2025-06-01", "2025-06-02"),
            (3, 2, "2020-01-01", "2026-01-10"),
            (4, 2, "2025-06-01", "2025-06-02"),
            (5, 2, "2022-01-01", "2025-08-01"),
            (6, 3, "2023-03-01", "2023-03-02"),
            (7, 4, "2023-03-01", "2026-02-01"),
        ]
        for received in sorted({r[3] for r in rows}):
            path = write_csv(
                tmp_path / f"{received}.csv",
                [
                    {
                        "record_id": f"R{n}",
                        "subject_id": resident_id(subject),
                        "kind": "transport.speeding",
                        "occurred_at": f"{occurred}T08:00:00",
                        "quantity": 12,
                    }
                    for n, subject, occurred, at in rows
                    if at == received
                ],
            )
            arrival = dt.datetime.fromisoformat(f"{received}T09:00:00")
            assert ws.ingest("transport", path, received_at=arrival).accepted > 0
        at, known = dt.datetime(2025, 1, 1), dt.datetime(2025, 12, 31)
        snap = ws.score(at, known)
        # None of these records still counts at T, so the snapshot stores no score row (each
        # member scores the base): the population is what its count and the plan's
        # ``population`` stage say.
        assert snap.subjects == 2
        cur = ws.engine.evaluate(ws.rulebook_at(at), at, known)
        try:
            want = sorted(r[0] for r in cur.execute("SELECT sid FROM population").fetchall())
        finally:
            cur.close()
        assert sorted(ws.sid_of(resident_id(s)) for s in (2, 3)) == want
        records, subjects, firsts = export_store(ws.store.con, tmp_path / "parquet")
        assert firsts is not None
        undecided = ws.store.con.execute(
            f"SELECT count(*) FROM ({firsts_sql.undecided_sql(at, known)})"
        ).fetchall()[0][0]
        assert undecided == 2
        for engine in (
            SparkEngine(spark, records, subjects, firsts),
            SparkEngine(spark, records, subjects),
        ):
            try:
                session = engine.evaluate(ws.rulebook_at(at), at, known)
                got = sorted(r[0] for r in session.sql("SELECT sid FROM population").collect())
            finally:
                engine.release()
            assert got == want
    finally:
        ws.close()


def test_the_records_are_exported_a_file_per_kind_sorted_by_subject(
    city: Workspace, tmp_path: Path
) -> None:
    """Each file holds one kind's records in subject order (Spark skips the other kinds' files
    by their statistics, and no sort of every record spills to disk); together, every record.
    An earlier export's single file is replaced; a store with no records gives one empty file
    with the records' columns."""
    out = tmp_path / "parquet"
    out.mkdir()
    (out / "records.parquet").write_text("an earlier export's file")
    records, *_ = export_store(city.store.con, out)
    con = duckdb.connect()
    files = sorted(records.iterdir())
    kinds = []
    for f in files:
        rows = con.execute(f"SELECT kind, sid FROM read_parquet('{f}')").fetchall()
        assert len({k for k, _ in rows}) == 1, f
        assert [sid for _, sid in rows] == sorted(sid for _, sid in rows), f
        kinds.append(rows[0][0])
    assert kinds == sorted(kinds)
    want = city.store.con.execute("SELECT * FROM records").fetchall()
    got = con.execute(
        f"SELECT * EXCLUDE ({WITHDRAWN_SINCE}) FROM read_parquet('{records}/*.parquet')"
    ).fetchall()
    assert sorted(got, key=repr) == sorted(want, key=repr)
    records, *_ = export_store(_bare_store(city, "LIMIT 0"), tmp_path / "empty")
    (only,) = records.iterdir()
    assert con.execute(f"SELECT count(*) FROM read_parquet('{only}')").fetchall() == [(0,)]
    columns = con.execute(f"DESCRIBE SELECT * FROM read_parquet('{only}')").fetchall()
    assert [c[:2] for c in columns] == [
        *(c[:2] for c in city.store.con.execute("DESCRIBE records").fetchall()),
        (WITHDRAWN_SINCE, "TIMESTAMP"),
    ]


@pytest.mark.parametrize("store", ["with withdrawals tables", "from before them"])
def test_each_record_is_exported_with_when_it_was_first_retracted(
    city: Workspace, tmp_path: Path, store: str
) -> None:
    """``withdrawn_since`` is the receipt of the first retraction of the record's department and
    subject naming it, NULL for a record none names: from the store's withdrawals tables, or,
    for a store without them, from every record's ids."""
    con = city.store.con if store == "with withdrawals tables" else _bare_store(city)
    records, *_ = export_store(con, tmp_path)
    got = duckdb.execute(
        f"SELECT department, record_id, sid, {WITHDRAWN_SINCE} "
        f"FROM read_parquet('{records}/*.parquet')"
    ).fetchall()
    want = city.store.con.execute(
        """SELECT r.department, r.record_id, r.sid, min(t.received_at)
        FROM records r LEFT JOIN records t ON t.retracts = r.record_id
          AND t.department = r.department AND t.sid = r.sid
        GROUP BY ALL"""
    ).fetchall()
    assert sorted(got, key=repr) == sorted(want, key=repr)
    assert sum(1 for *_, since in got if since is not None) > 10


def test_the_first_records_are_exported_only_when_they_cover_every_record(
    city: Workspace, tmp_path: Path
) -> None:
    """A store without the table (from before it) exports none, and an older export's file
    is removed, so that Spark never reads first records of other records."""
    out = tmp_path / "parquet"
    *_, firsts = export_store(city.store.con, out)
    assert firsts == out / "subject_firsts.parquet" and firsts.exists()
    assert export_store(_bare_store(city), out)[2] is None
    assert not firsts.exists()


def _bare_store(city: Workspace, limit: str = "") -> duckdb.DuckDBPyConnection:
    """An in-memory store with the city's records and subjects (``limit``: of them) and no
    other table, as a store from before the derived tables."""
    bare = duckdb.connect()
    for table in ("records", "subjects"):
        bare.register("rows", city.store.con.sql(f"SELECT * FROM {table} {limit}").to_arrow_table())
        bare.execute(f"CREATE TABLE {table} AS SELECT * FROM rows")
        bare.unregister("rows")
    return bare


def test_the_city_exercises_the_rules(
    city: Workspace, answers: dict[str, tuple[Rows, Rows]]
) -> None:
    """The comparison is only as good as the variety in the city: check there is some."""
    for question, (want, _) in answers.items():
        assert want["scores"], question
    now, _ = answers["now, everything known"]
    assert {band for _, _, band, _ in now["scores"]} >= {"AAA", "AA", "A", "B"}
    assert any(capped for *_, capped in now["scores"]), "no band capped by a grave sanction"
    listings = {row[1] for row in now["listings"]}
    assert {"dishonest_judgment_debtor", "rail_fare_evader", "green_channel"} <= listings
    assert {row[1] for row in now["contexts"]} >= {"transport", "civic", "tax", "judicial"}
    # Sums past the largest cap (30), which the snapshot keeps for daily updates.
    assert any(total > 30 for _, _, _, total, _ in now["caps"]), "no merit sum past its cap"
    kinds = dict(
        city.store.con.execute(
            "SELECT kind, count(*) FROM records WHERE kind IN ('court.judgment_settled', "
            "'civic.charitable_donation') OR retracts IS NOT NULL GROUP BY kind"
        ).fetchall()
    )
    assert kinds.get("court.judgment_settled", 0) > 0, "no settled judgment ends a listing"
    assert kinds.get("civic.charitable_donation", 0) > 0, "no per-unit rounding"
    assert len(kinds) > 2, "no retraction"
    # Fewer subjects and listings when fewer records are known.
    partial, _ = answers["now, three departments known"]
    assert len(partial["scores"]) < len(now["scores"])
    at, known = QUESTIONS["now, everything known"]
    cur = city.engine.evaluate(city.rulebook_at(at), at, known)
    try:
        capped = cur.execute(
            "SELECT count(*) FROM (SELECT sum(raw_points) AS total, any_value(cap) AS cap "
            "FROM matched WHERE cap IS NOT NULL GROUP BY sid, rule_id, year(occurred_at)) "
            "WHERE total > cap"
        ).fetchall()
        assert capped[0][0] > 0, "no merit cap bites"
    finally:
        cur.close()
    # Records on both sides of their validity's end: a record two years old stops counting.
    ages = city.store.con.execute(
        """SELECT count(*) FILTER (occurred_at + INTERVAL 2 YEAR <= $t),
                  count(*) FILTER (occurred_at + INTERVAL 2 YEAR > $t)
           FROM records WHERE kind = 'court.judgment_default' AND occurred_at <= $t""",
        {"t": at},
    ).fetchall()
    assert min(ages[0]) > 0, f"judgment defaults expired / still counting: {ages[0]}"


def test_score_engine_spark_on_the_command_line(
    city: Workspace, spark: SparkSession, tmp_path: Path
) -> None:
    """``civiscore score --engine spark`` stores the same snapshot as ``civiscore score``."""
    from typer.testing import CliRunner

    from civiscore.cli import app

    home = _copy_home(city, tmp_path / "home")
    runner = CliRunner(env={"CIVISCORE_HOME": None, "CIVISCORE_KEY_FILE": None})
    ids = {}
    for engine in ("duckdb", "spark"):
        args = ["--home", str(home), "score", "--at", CLI_AT, "--known-at", CLI_KNOWN, "--json"]
        result = runner.invoke(app, [*args, "--engine", engine])
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
        ids[engine] = json.loads(result.stdout)["snapshot_id"]
    assert (home / "parquet" / "records.parquet").exists()
    _assert_same_snapshots(home, ids["duckdb"], ids["spark"])


CLI_AT, CLI_KNOWN = "2026-10-31", "2026-12-31"


def _copy_home(city: Workspace, home: Path) -> Path:
    """A copy of the city's home, to score from the command line without touching the city."""
    city.store.con.execute("CHECKPOINT")
    home.mkdir()
    for name in ("store.duckdb", "pseudonym.key"):
        shutil.copy2(city.home / name, home / name)
    return home


def _assert_same_snapshots(home: Path, duck_id: int, spark_id: int) -> None:
    """The two snapshots hold the same rows in every table, and the Spark one can be the base
    of an incremental score like any other."""
    con = duckdb.connect(str(home / "store.duckdb"))
    try:
        for table, columns in SNAPSHOT_TABLES.items():

            def rows(snapshot_id: int, table: str = table, columns: str = columns) -> str:
                return f"SELECT {columns} FROM {table} WHERE snapshot_id = {snapshot_id}"

            duck, spark_ = rows(duck_id), rows(spark_id)
            counts = con.execute(
                f"SELECT (SELECT count(*) FROM ({duck})), (SELECT count(*) FROM ({spark_})), "
                f"(SELECT count(*) FROM (({duck} EXCEPT ALL {spark_}) "
                f"UNION ALL ({spark_} EXCEPT ALL {duck})))"
            ).fetchall()[0]
            assert counts[0] == counts[1] > 0 and counts[2] == 0, (table, counts)
        # The same population, counted by each engine (the scores leave some of it out).
        subjects = con.execute(
            "SELECT snapshot_id, subjects FROM snapshots "
            f"WHERE snapshot_id IN ({duck_id}, {spark_id})"
        ).fetchall()
        assert len({n for _, n in subjects}) == 1 and len(subjects) == 2, subjects
        lineage = con.execute(
            f"SELECT records_seen FROM snapshot_lineage WHERE snapshot_id = {spark_id}"
        ).fetchall()
        assert lineage == con.execute("SELECT count(*) FROM records").fetchall()
    finally:
        con.close()


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _master_state(ui_port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=5) as response:
        state: dict[str, Any] = json.load(response)
        return state


@pytest.fixture(scope="module")
def standalone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A Spark standalone cluster on this machine: a master and one worker, each its own JVM,
    started with the launcher pyspark ships (``bin/spark-class``). Yields the master's URL and
    its web UI's port (whose ``/json/`` tells its workers and applications)."""
    from pyspark.find_spark_home import _find_spark_home

    launcher = str(Path(_find_spark_home()) / "bin" / "spark-class")
    work = tmp_path_factory.mktemp("standalone")
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_DAEMON_MEMORY": "512m"}
    port, ui, worker_ui = _free_ports(3)
    url = f"spark://127.0.0.1:{port}"
    master = ["--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui)]
    worker = [url, "--host", "127.0.0.1", "--cores", "2", "--memory", "2g"]
    worker += ["--webui-port", str(worker_ui), "--work-dir", str(work / "work")]
    daemons = [
        ["org.apache.spark.deploy.master.Master", *master],
        ["org.apache.spark.deploy.worker.Worker", *worker],
    ]
    running: list[subprocess.Popen[bytes]] = []
    try:
        for i, args in enumerate(daemons):
            with (work / f"daemon-{i}.log").open("wb") as log:
                running.append(subprocess.Popen([launcher, *args], env=env, stdout=log, stderr=log))
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(OSError, ValueError):
                if _master_state(ui).get("aliveworkers", 0) >= 1:
                    break
            logs = "\n".join(p.read_text() for p in sorted(work.glob("daemon-*.log")))
            assert time.monotonic() < deadline, f"no worker joined {url} in 120 s:\n{logs}"
            assert all(d.poll() is None for d in running), f"a daemon stopped:\n{logs}"
            time.sleep(1)
        yield url, ui
    finally:
        for daemon in reversed(running):
            daemon.terminate()
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()


def test_score_engine_spark_on_a_standalone_cluster(
    city: Workspace, standalone: tuple[str, int], tmp_path: Path
) -> None:
    """``civiscore score --engine spark --master spark://…`` stores the DuckDB engine's
    snapshot, scored by the cluster's executor (a JVM of its own, with Spark's cluster
    settings: compressed caches, shuffles between processes). Run as its own process: in this
    one, the test session's local Spark would be reused and the master ignored."""
    url, ui = standalone
    home = _copy_home(city, tmp_path / "home")
    env = {k: v for k, v in os.environ.items() if k not in ("CIVISCORE_HOME", "CIVISCORE_KEY_FILE")}
    env["SPARK_LOCAL_IP"] = "127.0.0.1"
    ids = {}
    for engine, extra in (("duckdb", []), ("spark", ["--master", url])):
        args = ["--home", str(home), "score", "--at", CLI_AT, "--known-at", CLI_KNOWN, "--json"]
        done = subprocess.run(
            [sys.executable, "-m", "civiscore", *args, "--engine", engine, *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, (done.stdout, done.stderr)
        # The plan's own broadcast hints are not worth a warning (_quiet_hint_warnings).
        assert "HintErrorLogger" not in done.stderr, done.stderr
        ids[engine] = json.loads(done.stdout)["snapshot_id"]
    _assert_same_snapshots(home, ids["duckdb"], ids["spark"])
    # Scored on the cluster, not in a local Spark of the command's own.
    apps = _master_state(ui)["completedapps"]
    assert [app["name"] for app in apps] == ["civiscore"], apps
    assert apps[0]["cores"] > 0, apps


def test_write_snapshot(spark: SparkSession, tmp_path: Path) -> None:
    frames = {
        "scores": spark.createDataFrame(
            [(1, Decimal("1000.50"))], "sid bigint, score decimal(18,2)"
        )
    }
    written = write_snapshot(frames, tmp_path)
    assert written == {"scores": tmp_path / "snapshot_scores.parquet"}
    back = duckdb.connect().execute(
        f"SELECT sid, score FROM read_parquet('{written['scores']}/*.parquet')"
    )
    assert back.fetchall() == [(1, Decimal("1000.50"))]


def test_refuses_bad_input(spark: SparkSession, tmp_path: Path) -> None:
    con = duckdb.connect()
    con.execute("CREATE TABLE records AS SELECT 1::BIGINT AS sid, now() AS occurred_at")
    con.execute(f"COPY records TO '{tmp_path / 'records.parquet'}' (FORMAT parquet)")
    subjects = tmp_path / "subjects.parquet"
    with pytest.raises(SparkInputError, match="no such file"):
        SparkEngine(spark, tmp_path / "missing.parquet", subjects)
    with pytest.raises(SparkInputError) as caught:
        SparkEngine(spark, tmp_path / "records.parquet", subjects)
    message = str(caught.value)
    assert "column 'department' is missing" in message
    assert "column 'occurred_at' is timestamp, expected timestamp_ntz" in message
    assert "without a time zone" in message
    assert WITHDRAWN_SINCE not in message  # optional: not asked for when absent


def test_refuses_a_withdrawn_since_of_another_type(
    spark: SparkSession, city: Workspace, tmp_path: Path
) -> None:
    """The optional column, when there, is checked as the others are: a zoned time would shift
    every withdrawal by the session's offset."""
    records, subjects, _ = export_store(city.store.con, tmp_path / "parquet")
    zoned = tmp_path / "zoned.parquet"
    duckdb.execute(
        f"COPY (SELECT * REPLACE (CAST({WITHDRAWN_SINCE} AS TIMESTAMPTZ) AS {WITHDRAWN_SINCE}) "
        f"FROM read_parquet('{records}/*.parquet')) TO '{zoned}' (FORMAT parquet)"
    )
    with pytest.raises(SparkInputError, match=f"{zoned}: records: column '{WITHDRAWN_SINCE}'"):
        SparkEngine(spark, zoned, subjects)


# -- the translation, rewrite by rewrite: the same DuckDB SQL in both engines -------------------


def _both(
    sql: str, spark: SparkSession, schema: dict[str, dict[str, str]] | None = None
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    duck = duckdb.connect().execute(sql).fetchall()
    return duck, [tuple(row) for row in spark.sql(to_spark(sql, schema)).collect()]


def test_month_and_day_arithmetic(spark: SparkSession) -> None:
    """``to_months``/``to_days``: month ends clamp, months are added before days."""
    sql = """SELECT t, m, d, t + to_months(m) + to_days(d) AS until
             FROM (VALUES (TIMESTAMP '2024-01-31 10:00:00', 1, 0),
                          (TIMESTAMP '2024-02-29 23:59:59.999999', 12, 0),
                          (TIMESTAMP '2023-01-31 00:00:00', 1, 30),
                          (TIMESTAMP '2024-12-31 12:00:00', 0, 1),
                          (TIMESTAMP '2024-03-31 00:00:00', 36, 180),
                          (TIMESTAMP '2024-03-31 00:00:00', NULL, NULL)) AS v(t, m, d)
             ORDER BY t, m, d"""
    duck, spark_rows = _both(sql, spark)
    assert spark_rows == duck


def test_range_window_of_months(spark: SparkSession) -> None:
    """A RANGE frame of ``INTERVAL 'n months 0 days'``: the boundary row is inside in both."""
    sql = """SELECT sid, t, count(*) OVER (PARTITION BY sid ORDER BY t
                     RANGE BETWEEN INTERVAL '12 months 0 days' PRECEDING AND CURRENT ROW) AS n
             FROM (VALUES (1, TIMESTAMP '2023-02-28'), (1, TIMESTAMP '2024-02-29'),
                          (1, TIMESTAMP '2025-02-28'), (1, TIMESTAMP '2025-03-01'),
                          (2, TIMESTAMP '2024-01-31'), (2, TIMESTAMP '2024-02-01'),
                          (2, TIMESTAMP '2025-01-31')) AS v(sid, t)
             ORDER BY sid, t"""
    duck, spark_rows = _both(sql, spark)
    assert spark_rows == duck


def test_range_window_of_days(spark: SparkSession) -> None:
    sql = """SELECT t, count(*) OVER (ORDER BY t
                     RANGE BETWEEN INTERVAL '0 months 180 days' PRECEDING AND CURRENT ROW) AS n
             FROM (VALUES (TIMESTAMP '2024-01-01 00:00:00'), (TIMESTAMP '2024-06-29 00:00:00'),
                          (TIMESTAMP '2024-06-29 00:00:01')) AS v(t) ORDER BY t"""
    duck, spark_rows = _both(sql, spark)
    assert spark_rows == duck


def test_mixed_interval_refused() -> None:
    with pytest.raises(UnportableSQL, match="mixes months and days"):
        to_spark(
            "SELECT count(*) OVER (ORDER BY t RANGE BETWEEN INTERVAL '1 months 2 days' "
            "PRECEDING AND CURRENT ROW) FROM x"
        )


def test_round_of_doubles(spark: SparkSession, tmp_path: Path) -> None:
    """DuckDB rounds a double's exact binary value: round(0.725, 2) = 0.72, Spark's ROUND 0.73."""
    values = [k / 1000 for k in range(-3000, 3001)]
    values += [
        q * rate for q in (72.5, 100.5, 0.5, 1.5, 333.5, 4096.25) for rate in (0.01, 0.5, 0.03)
    ]
    values += [0.125, -0.125, 2.675, 1.005, 1.235, 0.285, 1e-9, 123456.785, 5e-324, -0.001]
    values += [float("inf"), float("-inf"), float("nan"), 1e300]
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"i": list(range(len(values))), "x": values}), path)
    con = duckdb.connect()
    con.execute(f"CREATE VIEW live AS SELECT * FROM read_parquet('{path}')")
    spark.read.parquet(str(path)).createOrReplaceTempView("live")
    sql = (
        "SELECT l.i, round(l.x * 3, 2), round(l.x, 2), round(l.x, 1), round(l.x) "
        "FROM live l ORDER BY l.i"
    )
    duck = con.execute(sql).fetchall()
    got = [
        tuple(r)
        for r in spark.sql(to_spark(sql, {"live": {"i": "bigint", "x": "double"}})).collect()
    ]
    assert repr(got) == repr(duck)  # repr: NaN is not equal to itself, and -0.0 must stay -0.0
    # The case that needs the rewrite: 72.5 yuan at 0.01 points each is 0.72 in DuckDB.
    assert duck[values.index(72.5 * 0.01)][2] == 0.72
    assert spark.sql("SELECT ROUND(0.725D, 2)").first() == (0.73,)


def test_round_of_decimals_unchanged(spark: SparkSession, tmp_path: Path) -> None:
    """Both engines round a DECIMAL half away from zero, so it is left as it is."""
    path = tmp_path / "d.parquet"
    con = duckdb.connect()
    con.execute(
        "COPY (SELECT CAST(x AS DECIMAL(9, 3)) AS x FROM (VALUES (0.725), (-0.725), (2.675), "
        f"(0.001)) AS v(x)) TO '{path}' (FORMAT parquet)"
    )
    con.execute(f"CREATE VIEW amounts AS SELECT * FROM read_parquet('{path}')")
    spark.read.parquet(str(path)).createOrReplaceTempView("amounts")
    sql = "SELECT a.x, round(a.x, 2) FROM amounts a ORDER BY a.x"
    translated = to_spark(sql, {"amounts": {"x": "decimal(9,3)"}})
    assert "FORMAT_NUMBER" not in translated
    duck = con.execute(sql).fetchall()
    assert [tuple(r) for r in spark.sql(translated).collect()] == duck
    assert [str(r[1]) for r in duck] == ["-0.73", "0.00", "0.73", "2.68"]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    values=st.lists(
        st.one_of(
            st.none(),
            st.decimals(min_value=-(10**13) + 1, max_value=10**13 - 1, places=2),
            st.decimals(min_value=-2, max_value=2, places=2),
        ),
        max_size=40,
    ),
    groups=st.integers(min_value=1, max_value=4),
)
def test_sum_of_decimals_is_exact(
    spark: SparkSession, tmp_path: Path, values: list[Decimal | None], groups: int
) -> None:
    """Spark sums a DECIMAL(18, 2) as longs of its hundredths (read through a DOUBLE): the
    same totals as DuckDB's exact sum, to the last hundredth, up to 10^13 in magnitude, NULLs
    skipped, and NULL for a group with none."""
    path = tmp_path / "s.parquet"
    rows = [(i % groups, v) for i, v in enumerate(values)] + [(groups, None)]
    table = pa.table(
        {"g": [g for g, _ in rows], "x": pa.array([v for _, v in rows], pa.decimal128(18, 2))}
    )
    pq.write_table(table, path)
    sql = "SELECT d.g, sum(d.x) AS total FROM d GROUP BY d.g ORDER BY d.g"
    translated = to_spark(sql, {"d": {"g": "bigint", "x": "decimal(18,2)"}})
    assert "RINT" in translated
    con = duckdb.connect()
    con.execute(f"CREATE VIEW d AS SELECT * FROM read_parquet('{path}')")
    spark.read.parquet(str(path)).createOrReplaceTempView("d")
    got = spark.sql(translated)
    assert got.schema["total"].dataType.simpleString() == "decimal(28,2)"
    assert [tuple(r) for r in got.collect()] == con.execute(sql).fetchall()


def test_sum_of_decimals_beyond_the_exact_range_fails(spark: SparkSession) -> None:
    """Rather than a total that might be a hundredth out, the query fails and says why."""
    spark.sql(
        "SELECT CAST(x AS DECIMAL(18, 2)) AS x FROM VALUES (1.00), (10000000000000.00) AS v(x)"
    ).createOrReplaceTempView("big")
    translated = to_spark("SELECT sum(b.x) FROM big b", {"big": {"x": "decimal(18,2)"}})
    with pytest.raises(Exception, match="exactly only for values below 1e13"):
        spark.sql(translated).collect()


def test_sums_left_alone() -> None:
    """Window sums, sums of DISTINCT values, of other types and of untold types are unchanged."""
    types = {"d": {"x": "decimal(18,2)", "n": "bigint", "q": "double"}}
    for sql in (
        "SELECT sum(d.x) OVER (PARTITION BY d.n) FROM d",
        "SELECT sum(DISTINCT d.x) FROM d",
        "SELECT sum(d.n), sum(d.q) FROM d",
        "SELECT sum(e.x) FROM e",
    ):
        assert "RINT" not in to_spark(sql, types), sql


def test_round_of_unknown_type_refused() -> None:
    """A value from a VALUES list could be DECIMAL or DOUBLE: refuse rather than guess."""
    with pytest.raises(UnportableSQL, match="cannot tell"):
        to_spark("SELECT round(v.x, 2) FROM (VALUES (0.725)) AS v(x)", {})


def test_qualified_star_with_using_keeps_column_order(spark: SparkSession) -> None:
    """Spark puts USING columns first in ``d.*``, DuckDB keeps d's order; UNION is by position."""
    sql = """WITH d AS (SELECT 'x' AS listing, true AS grave, 1::BIGINT AS sid),
                  s AS (SELECT 1::BIGINT AS sid, false AS grave_active)
             SELECT 'y' AS listing, false AS grave, 2::BIGINT AS sid
             UNION ALL SELECT d.* FROM d JOIN s USING (sid) WHERE NOT s.grave_active
             ORDER BY listing"""
    duck, spark_rows = _both(sql, spark)
    assert spark_rows == duck == [("x", True, 1), ("y", False, 2)]


@pytest.mark.parametrize(
    ("duckdb_sql", "spark_sql"),
    [
        ("SELECT arg_min(a, b), arg_max(a, b) FROM t", "SELECT MIN_BY(a, b), MAX_BY(a, b) FROM t"),
        (
            "SELECT NULL::TIMESTAMP, NULL::VARCHAR",
            "SELECT CAST(NULL AS TIMESTAMP_NTZ), CAST(NULL AS STRING)",
        ),
        ("SELECT list_contains(l, 'x') FROM t", "SELECT ARRAY_CONTAINS(l, 'x') FROM t"),
        (
            "SELECT isnan(q), isinf(q) FROM t",
            "SELECT CASE WHEN q IS NULL THEN NULL ELSE ISNAN(q) END, "
            "(ABS(q) = CAST('Infinity' AS DOUBLE)) FROM t",
        ),
        (
            "SELECT epoch_us(t) FROM t",
            "SELECT TIMESTAMPDIFF(MICROSECOND, "
            "CAST('1970-01-01 00:00:00' AS TIMESTAMP_NTZ), t) FROM t",
        ),
        ("SELECT CAST(x AS DECIMAL(18, 2)) FROM t", "SELECT CAST(x AS DECIMAL(18, 2)) FROM t"),
    ],
)
def test_translations(duckdb_sql: str, spark_sql: str) -> None:
    assert to_spark(duckdb_sql) == spark_sql


def test_isinf_isnan_epoch_us_agree(spark: SparkSession) -> None:
    sql = """SELECT q, isnan(q), isinf(q), epoch_us(t) FROM (VALUES
                 (1.5::DOUBLE, TIMESTAMP '2024-03-03 00:00:00.000001'),
                 ('Infinity'::DOUBLE, TIMESTAMP '1969-12-31 23:59:59'),
                 ('-Infinity'::DOUBLE, NULL), ('NaN'::DOUBLE, NULL),
                 (NULL, NULL)) AS v(q, t) ORDER BY epoch_us(t), q"""
    duck, spark_rows = _both(sql, spark)
    assert repr(spark_rows) == repr(duck)


def test_doctests() -> None:
    import doctest

    from civiscore.engine import dialect, spark_engine

    for module in (spark_engine, dialect):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__
