"""Run the scoring plan on Spark over Parquet, for populations one machine cannot hold.

Nothing about scoring is written here. Every stage of :func:`civiscore.engine.plan.stages` is
translated from DuckDB SQL to Spark SQL by :func:`civiscore.engine.dialect.to_spark` and
registered in a Spark session as a temporary view, as :class:`DuckDBEngine` creates them as
temporary tables; the snapshot's rows come from the very queries the DuckDB engine inserts
(``duckdb_engine._FRESH``), translated the same way. On the same records a Spark snapshot
equals a DuckDB one row for row, decimals included: ``tests/test_spark_engine.py`` checks it on
a synthetic city. ``docs/scale.md`` says how to run it on a cluster and what that costs.

The input is the store's ``records`` and ``subjects`` tables as Parquet (:func:`export_store`
writes them from a DuckDB store) with DuckDB's column types: timestamps without a time zone,
which Spark reads as ``TIMESTAMP_NTZ``; optionally also its ``subject_firsts``
(:mod:`civiscore.store.firsts`), from which the population is found as the DuckDB engine finds
it, instead of a pass over every record, and with each record when it was withdrawn
(:data:`WITHDRAWN_SINCE`), which spares matching every record's ids against the retractions.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pyarrow as pa
import sqlglot
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.functions import broadcast
from pyspark.sql.types import (
    BooleanType,
    DataType,
    DecimalType,
    DoubleType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampNTZType,
)
from sqlglot import exp

from civiscore.engine.dialect import to_spark
from civiscore.engine.duckdb_engine import _FRESH
from civiscore.engine.plan import Stage, first_retractions_sql, stages
from civiscore.rulebook.model import Rulebook
from civiscore.store import firsts, withdrawals

__all__ = [
    "BY_SUBJECT",
    "FIRSTS_SCHEMA",
    "POPULATION",
    "POPULATION_SCHEMA",
    "RECORDS_SCHEMA",
    "SNAPSHOT_SCHEMAS",
    "SNAPSHOT_SQL",
    "SUBJECTS_SCHEMA",
    "WITHDRAWN_SINCE",
    "SparkEngine",
    "SparkInputError",
    "export_store",
    "local_session",
    "worth_caching",
    "write_snapshot",
]

RECORDS_SCHEMA: dict[str, DataType] = {
    "department": StringType(),
    "record_id": StringType(),
    "sid": LongType(),
    "kind": StringType(),
    "occurred_at": TimestampNTZType(),
    "quantity": DoubleType(),
    "reference": StringType(),
    "retracts": StringType(),
    "received_at": TimestampNTZType(),
    "batch": LongType(),
}
"""The store's ``records`` columns in Spark's types; the Parquet input must have these."""

WITHDRAWN_SINCE = "withdrawn_since"
"""An optional column of the records input: when the first retraction naming the record (same
department and subject) was received, NULL if none was. :func:`export_store` writes it; with
it, withdrawn records are dropped by a filter that Spark pushes into the Parquet scan, rather
than by a join of every record's ids against the retractions (at Beijing's size the join made
the scan of every record 2.75 times as slow; docs/benchmarks.md). Records without it (a data
lake's own) are scored the same, by the join."""

BY_SUBJECT = "matched"
"""The stage whose rows are moved once to the partition of their subject, for everyone.

Every later stage but the listings groups or joins by subject (``caps``, ``points``, the
totals in ``scores``), and Spark then keeps the rows where they are instead of shuffling them
again at each step: a grouping by (subject, rule, year) or (subject, context) is already
clustered when each subject's rows are in one partition. Moving the matches costs one shuffle
of every match rather than of their partial sums, and spares the shuffles of ``points`` and of
the totals: at Beijing's size ``points`` took 6.7 s instead of 19.4 and ``scores`` 15.2 instead
of 20.9 (docs/benchmarks.md)."""

SUBJECTS_SCHEMA: dict[str, DataType] = {
    "sid": LongType(),
    "pseudonym": StringType(),
    "subject_type": StringType(),
}

FIRSTS_SCHEMA: dict[str, DataType] = {
    "sid": LongType(),
    "first_occurred": TimestampNTZType(),
    "its_received": TimestampNTZType(),
    "first_received": TimestampNTZType(),
    "its_occurred": TimestampNTZType(),
}
"""The store's ``subject_firsts`` columns in Spark's types (:mod:`civiscore.store.firsts`)."""

_POINTS = DecimalType(18, 2)

# A computed stage of at most this many rows is broadcast to the joins that read it, whatever
# Spark's own threshold (``spark.sql.autoBroadcastJoinThreshold``, 10 MB of estimated size)
# says. The plan's small stages are the retractions and the listings, a few dozen bytes a row,
# so a few hundred MB at most. At Beijing's size the retractions are a million rows
# (``withdrawn``), above Spark's threshold: the join that drops withdrawn records shuffled and
# sorted all 209 million records against them, and ``groups`` took 186 s of a 292 s score
# (docs/benchmarks.md, "The Spark engine"). A country's retractions (tens of millions) are
# joined as Spark decides, as before.
BROADCAST_ROWS = 5_000_000

SNAPSHOT_SCHEMAS: dict[str, dict[str, DataType]] = {
    "scores": {
        "sid": LongType(),
        "score": _POINTS,
        "band": StringType(),
        "band_capped": BooleanType(),
    },
    "contexts": {
        "sid": LongType(),
        "context": StringType(),
        "points": _POINTS,
        "records": LongType(),
    },
    "listings": {
        "sid": LongType(),
        "listing": StringType(),
        "list": StringType(),
        "since": TimestampNTZType(),
        "until": TimestampNTZType(),
        "record_id": StringType(),
        "department": StringType(),
        "reference": StringType(),
    },
    "caps": {
        "sid": LongType(),
        "rule_no": IntegerType(),
        "cap_year": IntegerType(),
        "total": _POINTS,
        "records": IntegerType(),
    },
}
"""Columns of :meth:`SparkEngine.score_frames`: the store's ``snapshot_*`` tables, less the
snapshot number."""


def _without_snapshot_id(sql: str) -> str:
    """The DuckDB engine's snapshot query without its ``$id AS snapshot_id`` column."""
    tree = sqlglot.parse_one(sql, read="duckdb")
    assert isinstance(tree, exp.Select)
    tree.set("expressions", [e for e in tree.expressions if not e.find(exp.Placeholder)])
    return tree.sql(dialect="duckdb")


SNAPSHOT_SQL: dict[str, str] = {
    table.removeprefix("snapshot_"): _without_snapshot_id(sql) for table, sql in _FRESH.items()
}
"""DuckDB SQL for each snapshot table, from the DuckDB engine, keyed as in SNAPSHOT_SCHEMAS."""
assert set(SNAPSHOT_SQL) == set(SNAPSHOT_SCHEMAS)

POPULATION = "population"
"""The key of :meth:`SparkEngine.score_frames`' one-row frame counting the population."""
POPULATION_SCHEMA: dict[str, DataType] = {"subjects": LongType()}


class SparkInputError(ValueError):
    """A Parquet input the engine cannot score: missing, or with the wrong columns or types."""


def local_session(
    cores: int = 2,
    shuffle_partitions: int = 4,
    driver_memory: str = "4g",
    app_name: str = "civiscore",
) -> SparkSession:
    """A Spark session in local mode: loopback only, no web UI.

    For one machine, tests and measurements. On a cluster, let ``spark-submit --master …``
    build the session (``SparkSession.builder.getOrCreate()``) and hand it to
    :class:`SparkEngine`; see ``docs/scale.md``.

    Args:
        cores: Worker threads (``local[cores]``).
        shuffle_partitions: ``spark.sql.shuffle.partitions``; Spark's default of 200 is far
            too many for one machine.
        driver_memory: JVM heap; honoured only if this call starts the JVM.
        app_name: Name in Spark's logs.
    """
    # Spark otherwise looks the host name up and warns that it is a loopback address.
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder: SparkSession.Builder = SparkSession.builder
    session = (
        builder.master(f"local[{cores}]")
        .appName(app_name)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.memory", driver_memory)
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        # The cached stages held as they are, not compressed: at Beijing's size a score took 7 %
        # less time so (104.5 s against 112.1 s; docs/benchmarks.md), and one machine's memory
        # holds them. A cluster's session keeps Spark's default, which spills less.
        .config("spark.sql.inMemoryColumnarStorage.compressed", "false")
        # Every timestamp civiscore stores is naive local time (TIMESTAMP_NTZ); in a UTC session
        # any stray conversion to Spark's zoned TIMESTAMP is a no-op rather than a shift.
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    return session


def cluster_session(master: str, app_name: str = "civiscore") -> SparkSession:
    """A Spark session on a cluster manager (``spark://host:7077``, ``yarn``, ``k8s://…``).

    Executors, memory and shuffle partitions come from the cluster's defaults or
    ``spark-submit --conf``; only what the results depend on is fixed here.
    """
    builder: SparkSession.Builder = SparkSession.builder
    return (
        builder.master(master)
        .appName(app_name)
        .config("spark.ui.showConsoleProgress", "false")
        # See local_session: naive local times throughout, so no zone may shift them.
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )


@contextmanager
def spark_session(master: str | None = None) -> Iterator[SparkSession]:
    """The session to score in: the running one if there is one, else a new one, stopped after.

    A process that already runs Spark (``spark-submit``, a notebook, the test suite) keeps its
    session and its settings; ``master`` is then ignored, as Spark's ``getOrCreate`` would.

    Args:
        master: A cluster's master URL, or None for local mode on every core of this machine.
    """
    running = SparkSession.getActiveSession()
    if running is not None:
        yield running
        return
    cores = local_cores(master or "local[*]")
    session = (
        cluster_session(master or "")
        if cores is None
        else local_session(cores=cores, shuffle_partitions=2 * cores)
    )
    try:
        yield session
    finally:
        session.stop()


def local_cores(master: str) -> int | None:
    """The worker threads of a local master URL; None for a cluster's.

    >>> [local_cores(m) for m in ("local", "local[3]", "spark://h:7077")]
    [1, 3, None]
    >>> local_cores("local[*]") == (os.cpu_count() or 1)
    True
    """
    if master == "local":
        return 1
    found = re.fullmatch(r"local\[(\d+|\*)\]", master)
    if found is None:
        return None
    return (os.cpu_count() or 1) if found.group(1) == "*" else int(found.group(1))


def export_store(
    con: duckdb.DuckDBPyConnection, out_dir: str | Path
) -> tuple[Path, Path, Path | None]:
    """Write a DuckDB store's ``records``, ``subjects`` and ``subject_firsts`` tables as Parquet
    for Spark (the records as a directory of files, one per kind).

    The three are read in one transaction, so that they describe the same records. Each record
    carries :data:`WITHDRAWN_SINCE`, from the store's withdrawals tables (folded first) or, when
    they do not cover every record (a store from before them), by matching every record's ids
    against the retractions. The firsts are written only when they cover every record written
    (they are folded first; a store from before the table has none): the Spark engine then
    finds the population from them, as the DuckDB engine does, instead of from every record.

    Args:
        con: A connection to the store (``Workspace.store.con``), writable (the firsts are
            folded).
        out_dir: Directory for ``records.parquet`` (a directory), ``subjects.parquet`` and
            ``subject_firsts.parquet``; created if missing, an earlier export's files replaced
            (or, for the firsts when none are written, removed).

    Returns:
        The records directory, the subjects file and the firsts file (None when not
        written).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records_path, subjects_path = out / "records.parquet", out / "subjects.parquet"
    firsts_path = out / f"{firsts.TABLE}.parquet"
    firsts.fold_new(con)
    withdrawals.fold_new(con)

    def copy(sql: str, path: Path) -> None:
        target = "'" + str(path).replace("'", "''") + "'"
        con.execute(f"COPY ({sql}) TO {target} (FORMAT parquet)")

    con.execute("BEGIN TRANSACTION")
    try:
        # The records a file per kind, each sorted by subject: the plan reads each listing's
        # kinds on their own (a kind of decision, its remedy, a kind of conduct), and Spark then
        # skips the other kinds' files by their row groups' statistics. Sorting a kind at a
        # time, rather than every record by kind and subject, spills one kind's rows at most:
        # at Beijing's size the one sort spilled 40 GB to disk.
        if records_path.is_dir():
            shutil.rmtree(records_path)
        else:
            records_path.unlink(missing_ok=True)
        records_path.mkdir()
        total = int(con.execute("SELECT count(*) FROM records").fetchall()[0][0])
        _withdrawn_rows(con, total)
        kinds = [row[0] for row in con.execute("SELECT DISTINCT kind FROM records").fetchall()]
        for i, kind in enumerate(sorted(kinds) or [None]):
            which = "" if kind is None else " WHERE r.kind = '" + kind.replace("'", "''") + "'"
            copy(
                f"""SELECT r.*, w.known_since AS {WITHDRAWN_SINCE}
                FROM records r LEFT JOIN export_withdrawn w ON w.row_id = r.rowid{which}
                ORDER BY r.sid""",
                records_path / f"{i:05d}.parquet",
            )
        con.execute("DROP TABLE export_withdrawn")
        copy("SELECT * FROM subjects ORDER BY sid", subjects_path)
        upto = firsts.covered(con)
        if upto == total:
            copy(f"SELECT * FROM {firsts.TABLE} ORDER BY sid", firsts_path)
            written: Path | None = firsts_path
        else:
            firsts_path.unlink(missing_ok=True)
            written = None
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return records_path, subjects_path, written


def _withdrawn_rows(con: duckdb.DuckDBPyConnection, total: int) -> None:
    """Create the temporary table ``export_withdrawn``: the rowid of each withdrawn record and
    when its first retraction was received (``known_since``)."""
    if withdrawals.covered(con) == total:
        # The table holds a row once; grouped all the same, as a row listed twice would be
        # exported twice.
        source = (
            f"SELECT row_id, min(known_since) AS known_since FROM {withdrawals.ROWS} "
            "GROUP BY row_id"
        )
    else:
        source = f"""SELECT r.rowid AS row_id, w.known_since
            FROM records r JOIN ({first_retractions_sql("true")}) w
              ON w.sid = r.sid AND w.department = r.department AND w.record_id = r.record_id"""
    con.execute(f"CREATE OR REPLACE TEMP TABLE export_withdrawn AS {source}")


def write_snapshot(frames: dict[str, DataFrame], out_dir: str | Path) -> dict[str, Path]:
    """Write :meth:`SparkEngine.score_frames` as Parquet: ``<out_dir>/snapshot_<name>.parquet``
    (``snapshot_population.parquet``: the one row counting the population).

    Each is a directory of part files, as Spark writes them; existing output is replaced.

    Returns:
        Where each frame went, by the same keys.
    """
    out = Path(out_dir)
    written = {}
    for name, frame in frames.items():
        path = out / f"snapshot_{name}.parquet"
        frame.write.mode("overwrite").parquet(str(path))
        written[name] = path
    return written


class SparkEngine:
    """The scoring plan on Spark, over the store's tables exported as Parquet.

    Each question gets its own ``SparkSession.newSession()``: its temporary views (the plan's
    stage names) are private to it, as a DuckDB cursor's temporary tables are, so questions for
    different (T, K) never see each other's stages. The new session starts from the caller's
    SQL settings.

    Args:
        spark: The session to work in (local, or on a cluster).
        records_parquet: The ``records`` table: a Parquet file, a directory of them, or any URL
            Spark reads (``hdfs://``, ``s3a://``); with or without :data:`WITHDRAWN_SINCE`.
        subjects_parquet: The ``subjects`` table, likewise.
        firsts_parquet: The ``subject_firsts`` table covering exactly those records, likewise,
            or None. With it the population is found from each subject's first records (an
            18-million-row read at Beijing's size) rather than the distinct subjects of every
            record (209 million).
        cache: Cache the stages that would otherwise be computed more than once
            (:func:`worth_caching`). Off, Spark recomputes them in every query that reads them.

    Raises:
        SparkInputError: An input is missing, lacks a column, or has a column of another type.
    """

    def __init__(
        self,
        spark: SparkSession,
        records_parquet: str | Path,
        subjects_parquet: str | Path,
        firsts_parquet: str | Path | None = None,
        *,
        cache: bool = True,
    ):
        self.spark = spark
        self.records_parquet = str(records_parquet)
        self.subjects_parquet = str(subjects_parquet)
        self.firsts_parquet = None if firsts_parquet is None else str(firsts_parquet)
        self.cache = cache
        self.records_schema = _check(
            spark,
            self.records_parquet,
            "records",
            RECORDS_SCHEMA,
            optional={WITHDRAWN_SINCE: TimestampNTZType()},
        )
        _check(spark, self.subjects_parquet, "subjects", SUBJECTS_SCHEMA)
        if self.firsts_parquet is not None:
            _check(spark, self.firsts_parquet, firsts.TABLE, FIRSTS_SCHEMA)
        _quiet_hint_warnings(spark)
        self._cached: list[DataFrame] = []

    def evaluate(
        self,
        rb: Rulebook,
        at: dt.datetime,
        known_at: dt.datetime,
        sid: int | None = None,
        timings: dict[str, float] | None = None,
    ) -> SparkSession:
        """Register every stage for (T, K[, subject]) as a view; returns the session holding them.

        Stages in :func:`worth_caching` are computed and cached on the way (:meth:`release`
        frees them); the others are computed by each query that reads them. ``timings``, when
        given, receives the seconds each cached stage took (for benchmarks).
        """
        session = self.spark.newSession()
        parent = self.spark.conf
        for key, value in parent.getAll.items():
            if parent.isModifiable(key):
                session.conf.set(key, value)
        types: dict[str, dict[str, str]] = {}
        inputs = [
            ("records", self.records_parquet, self.records_schema),
            ("subjects", self.subjects_parquet, SUBJECTS_SCHEMA),
        ]
        if self.firsts_parquet is not None and sid is None:
            inputs.append((firsts.TABLE, self.firsts_parquet, FIRSTS_SCHEMA))
        for table, path, schema in inputs:
            session.read.schema(_struct(schema)).parquet(path).createOrReplaceTempView(table)
            types[table] = {name: kind.simpleString() for name, kind in schema.items()}
        population = None
        if firsts.TABLE in types:
            count = f"SELECT count(*) FROM ({firsts.undecided_sql(at, known_at)}) u"
            undecided = session.sql(to_spark(count, types)).collect()[0][0]
            population = firsts.population_from(
                at, known_at, "records", upto=None, undecided=bool(undecided)
            )
        plan = stages(
            rb,
            at,
            known_at,
            sid,
            population=population,
            withdrawn_since=WITHDRAWN_SINCE in self.records_schema,
        )
        cached = worth_caching(plan) if self.cache else set()
        partitions = int(session.conf.get("spark.sql.shuffle.partitions") or 200)
        for stage in plan:
            frame = session.sql(to_spark(stage.sql, types))
            if sid is None and stage.name == BY_SUBJECT:
                frame = frame.repartition(partitions, "sid")
            if stage.name in cached:
                frame = frame.persist(StorageLevel.MEMORY_AND_DISK)
                self._cached.append(frame)
                # Computed now, as the DuckDB engine creates its tables one by one: Spark then
                # plans each later stage knowing this one's real size, and a small one (the
                # retractions in ``withdrawn``) is broadcast instead of every record being
                # shuffled and sorted against it (BROADCAST_ROWS).
                start = time.perf_counter()
                rows = frame.count()
                if timings is not None:
                    timings[stage.name] = time.perf_counter() - start
                if rows <= BROADCAST_ROWS:
                    frame = broadcast(frame)
            frame.createOrReplaceTempView(stage.name)
            types[stage.name] = {f.name: f.dataType.simpleString() for f in frame.schema.fields}
        return session

    def score_frames(
        self,
        rb: Rulebook,
        at: dt.datetime,
        known_at: dt.datetime,
        timings: dict[str, float] | None = None,
    ) -> dict[str, DataFrame]:
        """The population snapshot for (T, K) as Spark DataFrames, computed when read.

        The plan's cached stages are computed first (see :meth:`evaluate`, which also says what
        ``timings`` receives).

        Returns:
            ``scores``, ``contexts``, ``listings`` and ``caps``, with the columns and types of
            :data:`SNAPSHOT_SCHEMAS`: the rows :meth:`DuckDBEngine.score` writes to
            ``snapshot_scores``, ``snapshot_contexts``, ``snapshot_listings`` and
            ``snapshot_caps``, without the snapshot number; and :data:`POPULATION`, one row
            (:data:`POPULATION_SCHEMA`) counting the members of the population, since the
            scores hold only the subjects whose row differs from the base's default
            (:func:`civiscore.engine.plan.default_row`). Write them with
            :func:`write_snapshot`, then :meth:`release`.
        """
        session = self.evaluate(rb, at, known_at, timings=timings)
        frames = {}
        for name, sql in SNAPSHOT_SQL.items():
            schema = SNAPSHOT_SCHEMAS[name]
            frame = session.sql(to_spark(sql)).toDF(*schema)
            # Typed as the store's columns, as DuckDB's INSERT … SELECT makes them.
            frames[name] = frame.select(*(frame[c].cast(t).alias(c) for c, t in schema.items()))
        frames[POPULATION] = session.sql(
            f"SELECT CAST(count(*) AS BIGINT) AS subjects FROM {POPULATION}"
        )
        return frames

    def score_arrow(
        self, rb: Rulebook, at: dt.datetime, known_at: dt.datetime
    ) -> tuple[dict[str, pa.Table], int]:
        """The population snapshot for (T, K), collected to this process as Arrow tables.

        Returns:
            ``snapshot_scores``, ``snapshot_contexts``, ``snapshot_listings`` and
            ``snapshot_caps`` rows, and the population's count, ready for
            :meth:`DuckDBEngine.store_snapshot`. Only for a population whose snapshot fits in
            the driver's memory (a city); a country's goes to Parquet with
            :func:`write_snapshot`.
        """
        try:
            frames = self.score_frames(rb, at, known_at)
            subjects = int(frames.pop(POPULATION).collect()[0][0])
            rows = {f"snapshot_{name}": frame.toArrow() for name, frame in frames.items()}
            return rows, subjects
        finally:
            self.release()

    def release(self) -> None:
        """Free the cached stages of every question asked so far."""
        for frame in self._cached:
            frame.unpersist()
        self._cached.clear()


def _quiet_hint_warnings(spark: SparkSession) -> None:
    """Silence Spark's warning that a broadcast hint "is not part of a join relation".

    A small stage is registered with its hint (BROADCAST_ROWS) for the joins that read it; every
    other read of it (a snapshot's query, a filter) makes Spark log that warning, which says
    nothing wrong, half a dozen times a score on a cluster's session (a local session logs
    errors only). Only that logger is set to errors.
    """
    try:
        jvm = spark.sparkContext._jvm
    except Exception:  # no JVM in this process (Spark Connect): its logging is left as it is
        return
    if jvm is None:
        return
    log4j = jvm.org.apache.logging.log4j
    log4j.core.config.Configurator.setLevel(
        "org.apache.spark.sql.catalyst.analysis.HintErrorLogger", log4j.Level.ERROR
    )


def worth_caching(plan: list[Stage]) -> set[str]:
    """The stages to cache: those Spark would compute more than once, unless the plan says view.

    Spark recomputes an uncached view in every query that reads it, so a stage is computed
    as often as it is read, times how often its readers are computed: ``withdrawn`` is read
    once, by ``live``, but ``live`` is read four times. A stage the plan marks as a view
    (``live``: a filtered copy of nearly every record; for many subjects ``matched``, read
    only by the totals) is cheaper to recompute, with each reader's own filters pushed into
    the Parquet scan, than to copy into memory.

    >>> from civiscore.rulebook.load import demo_rulebook_path, load
    >>> when = dt.datetime(2026, 1, 1)
    >>> sorted(worth_caching(stages(load(demo_rulebook_path()), when, when, None)))
    ['caps', 'conduct_listings', 'decision_listings', 'points', 'scores', 'withdrawn']
    """
    reads = {stage.name: _tables(stage.sql) for stage in plan}
    snapshot: Counter[str] = Counter()
    for sql in SNAPSHOT_SQL.values():
        snapshot.update(_tables(sql))
    runs: dict[str, int] = {}  # later stages: how many times each is computed
    cached: set[str] = set()
    for stage in reversed(plan):
        runs[stage.name] = snapshot[stage.name] + sum(
            reads[reader][stage.name] * (1 if reader in cached else n) for reader, n in runs.items()
        )
        if not stage.view and runs[stage.name] > 1:
            cached.add(stage.name)
    return cached


def _tables(sql: str) -> Counter[str]:
    """How many times a statement reads each table (a table named twice counts twice)."""
    tree = sqlglot.parse_one(sql, read="duckdb")
    ctes = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
    return Counter(t.name for t in tree.find_all(exp.Table) if t.name not in ctes)


def _struct(schema: dict[str, DataType]) -> StructType:
    return StructType([StructField(name, kind) for name, kind in schema.items()])


def _check(
    spark: SparkSession,
    path: str,
    table: str,
    schema: dict[str, DataType],
    optional: dict[str, DataType] | None = None,
) -> dict[str, DataType]:
    """Refuse a Parquet input with missing columns, or with types that would change results.

    Returns:
        The columns to read: ``schema``, and those of ``optional`` the input has.
    """
    if "://" not in path and not Path(path).exists():
        raise SparkInputError(
            f"{path}: no such file or directory; write the store's {table} table as Parquet "
            "first (civiscore.engine.spark_engine.export_store)"
        )
    found = {f.name: f.dataType for f in spark.read.parquet(path).schema.fields}
    wanted_columns = dict(schema)
    wanted_columns.update({c: t for c, t in (optional or {}).items() if c in found})
    problems = []
    for column, wanted in wanted_columns.items():
        got = found.get(column)
        if got is None:
            problems.append(f"column {column!r} is missing")
        elif got != wanted:
            problems.append(
                f"column {column!r} is {got.simpleString()}, expected {wanted.simpleString()}"
            )
    if problems:
        hint = (
            "; write timestamps without a time zone, as DuckDB's TIMESTAMP is"
            if any("timestamp" in p for p in problems)
            else ""
        )
        raise SparkInputError(f"{path}: {table}: " + "; ".join(problems) + hint)
    return wanted_columns
