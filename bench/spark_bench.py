"""Benchmark: the Spark engine's full scoring against a hand-written Spark SQL floor.

Run from the repository root (after ``make test`` has made ``.venv``)::

    .venv/bin/python bench/spark_bench.py --residents 1000000 --years 8

What it measures, in one process and one Spark session:

1. **Store.** The store ``score_bench.py`` builds for these arguments
   (``<workdir>/home-<residents>-<years>-<seed>``), built the same way when missing.
2. **Parquet.** ``export_store`` writes its ``records`` and ``subjects`` to
   ``<workdir>/parquet-<tag>/``, the Spark engine's input (timed, not part of the ratio), with
   DuckDB held to ``--threads`` and ``--memory-limit`` as in ``score_bench.py``; its peak
   resident memory is reported.
3. **Session start-up.** ``local_session`` until a first one-row job has run: the JVM, the
   session and the first task. Reported on its own: a cluster pays it once per job, not per
   score.
4. **Score.** ``SparkEngine.score_frames`` (the whole plan; the cached stages are computed on
   the way, each timed) and ``write_snapshot`` of scores, contexts and listings as Parquet to
   ``<workdir>/spark-snapshot-<tag>/``.
5. **Floor.** One hand-written ``spark.sql`` query over the same records Parquet: join to a
   VALUES table of one fixed point value per kind (``score_bench.floor_points``, the floor of
   the DuckDB benchmark), keep records still counting at T, sum per subject, written as Parquet.
   No retractions, quantity conditions, caps, listings or bands.
   Score and floor runs alternate, ``--runs`` of each, so that load from other processes on
   the machine falls on both; the best of each counts.
6. **Identity** (unless ``--no-verify``). The DuckDB engine scores the same store at the same
   (T, K) and its snapshot is compared with the Spark engine's Parquet, row for row
   (``EXCEPT ALL`` both ways). Any difference fails the benchmark.

Memory: the JVM's peak resident set (``VmHWM`` of the driver, which in local mode runs the
executors' tasks too), with ``--master`` also the peak of this machine's executor JVMs, and
this Python process's own peak (``ru_maxrss``). Results go to the console, to
``<workdir>/spark-results-<tag>-c<cores>.json`` (``spark-results-<tag>-cluster.json`` with
``--master``, so that neither overwrites the other) and as a Markdown row to stdout.

``--master spark://127.0.0.1:7077`` runs the same on a standalone cluster started on this
machine (docs/scale.md says how): the session the command line builds for a cluster, with
Spark's default settings (compressed caches) and the plan's tasks in the worker's executor,
shuffling between processes; ``--cores`` is then the worker's business, and the memory of
each JVM is set through ``PYSPARK_SUBMIT_ARGS`` (``--driver-memory``, ``--executor-memory``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import duckdb
from incremental_bench import source_home
from pyspark.sql import SparkSession
from rich.console import Console
from score_bench import (
    configure,
    floor_points,
    machine,
    phase_peak_mib,
    reset_peak,
    ru_maxrss_mib,
)

from civiscore.engine.incremental import SNAPSHOT_TABLES
from civiscore.engine.spark_engine import (
    SparkEngine,
    cluster_session,
    export_store,
    local_session,
    write_snapshot,
)
from civiscore.rulebook.model import Rulebook
from civiscore.synth.city import DEFAULT_END
from civiscore.timeutil import now_local
from civiscore.workspace import Workspace

console = Console(stderr=True, highlight=False)


def floor_spark_sql(rb: Rulebook, at: dt.datetime) -> str:
    """The DuckDB benchmark's floor, written by hand in Spark SQL (not translated)."""
    rows = ",\n    ".join(
        f"('{kind}', {points!r}, {months}, {days})"
        for kind, points, months, days in floor_points(rb, at)
    )
    return f"""SELECT r.sid, CAST(sum(p.points) AS DECIMAL(18, 2)) AS points
FROM records r
JOIN (VALUES
    {rows}
) AS p(kind, points, valid_m, valid_d) ON r.kind = p.kind
WHERE r.occurred_at + make_ym_interval(0, p.valid_m) + make_dt_interval(p.valid_d)
      > TIMESTAMP_NTZ '{at.isoformat(sep=" ")}'
GROUP BY r.sid"""


def jvm_peak_mib(spark: SparkSession) -> float | None:
    """Peak resident memory of the Spark driver's JVM (Linux ``VmHWM``), or None."""
    pid = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()  # type: ignore[union-attr]
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def executor_peak_mib() -> float | None:
    """Peak resident memory of this machine's Spark executor JVMs (a standalone worker's), or
    None when there is none: with ``--master``, the plan's tasks run there, not in the driver."""
    peaks = []
    for proc in Path("/proc").iterdir():
        try:
            if b"CoarseGrainedExecutorBackend" not in (proc / "cmdline").read_bytes():
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
        except OSError:
            continue
    return max(peaks) if peaks else None


def differences(
    con: duckdb.DuckDBPyConnection, snapshot_id: int, spark_dir: Path
) -> dict[str, int]:
    """Rows in the DuckDB snapshot and not in the Spark one or the other way, per table."""
    out = {}
    for table, columns in SNAPSHOT_TABLES.items():
        duck = f"SELECT {columns} FROM {table} WHERE snapshot_id = {int(snapshot_id)}"
        files = str(spark_dir / f"{table}.parquet" / "*.parquet").replace("'", "''")
        spark = f"SELECT {columns} FROM read_parquet('{files}')"
        row = con.execute(
            f"SELECT count(*) FROM (({duck} EXCEPT ALL {spark}) "
            f"UNION ALL ({spark} EXCEPT ALL {duck}))"
        ).fetchall()[0]
        out[table] = int(row[0])
    return out


@dataclass
class Results:
    residents: int
    years: int
    seed: int
    cores: int
    shuffle_partitions: int
    driver_memory: str
    spark_version: str
    machine: dict[str, Any]
    at: str
    known_at: str
    records: int
    subjects: int
    duckdb_settings: dict[str, str]
    export_seconds: float
    export_peak_mib: float | None
    startup_seconds: float
    score_seconds: float
    score_runs: list[float]
    stage_seconds: dict[str, float]
    write_seconds: float
    floor_seconds: float
    floor_runs: list[float]
    floor_subjects: int
    load_average: dict[str, list[float]]
    jvm_peak_mib: float | None
    executor_peak_mib: float | None
    master: str
    python_peak_mib: float
    differences: dict[str, int] | None

    @property
    def ratio(self) -> float:
        return self.score_seconds / self.floor_seconds

    def markdown_header(self) -> str:
        return (
            "| residents | records | subjects | cores | shuffle partitions | driver memory "
            "| session start-up (s) | full score (s) | floor (s) | full/floor | JVM peak (MiB) "
            "| identical to DuckDB |\n"
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        )

    def markdown_row(self) -> str:
        same = (
            "not checked"
            if self.differences is None
            else ("yes" if not any(self.differences.values()) else f"NO: {self.differences}")
        )
        peak = "n/a" if self.jvm_peak_mib is None else f"{self.jvm_peak_mib:,.0f}"
        return (
            f"| {self.residents:,} | {self.records:,} | {self.subjects:,} | {self.cores} "
            f"| {self.shuffle_partitions} | {self.driver_memory} | {self.startup_seconds:.1f} "
            f"| {self.score_seconds:.1f} | {self.floor_seconds:.1f} | {self.ratio:.1f}x "
            f"| {peak} | {same} |"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--residents", type=int, default=100_000)
    p.add_argument("--years", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=Path("bench/out"))
    p.add_argument("--cores", type=int, default=2, help="local[cores]")
    p.add_argument("--shuffle-partitions", type=int, default=4)
    p.add_argument("--driver-memory", default="6g")
    p.add_argument("--threads", type=int, default=2, help="DuckDB's, for the export and identity")
    p.add_argument(
        "--memory-limit",
        default="5GB",
        help="DuckDB's memory limit for the export and identity check (score_bench.py's option)",
    )
    p.add_argument(
        "--master",
        help="a cluster's master URL (spark://host:7077): the session the command line builds "
        "for it (cluster_session, Spark's default settings) instead of local[cores]",
    )
    p.add_argument("--executor-memory", default="12g", help="with --master: spark.executor.memory")
    p.add_argument("--runs", type=int, default=2, help="score and floor runs; the best counts")
    p.add_argument("--no-verify", action="store_true", help="skip the DuckDB identity check")
    p.add_argument(
        "--reuse-export",
        action="store_true",
        help="read the Parquet an earlier run wrote from the same store, when it is there "
        "(the export is then not timed: its seconds and peak are reported as 0 and n/a)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir: Path = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    tag = f"{args.residents}-{args.years}-{args.seed}"
    home = source_home(workdir, args.residents, args.years, args.seed)
    parquet, snapshot_dir = workdir / f"parquet-{tag}", workdir / f"spark-snapshot-{tag}"
    floor_dir = workdir / f"spark-floor-{tag}"

    ws = Workspace.open(home)
    try:
        con = ws.store.con
        # The export sorts records: without a limit DuckDB takes 80 % of the machine's memory
        # for it (20 GiB of this one's 24 at Beijing's size, when it sorted them all at once).
        settings = configure(con, args.threads, args.memory_limit)
        records = int(con.execute("SELECT count(*) FROM records").fetchall()[0][0])
        at = dt.datetime.combine(DEFAULT_END, dt.time.max)
        known_at = now_local()
        rb = ws.rulebook_at(at)
        console.rule("Parquet")
        reset_peak()
        start = time.perf_counter()
        names = ("records", "subjects", "subject_firsts")
        earlier = [parquet / f"{name}.parquet" for name in names]
        if args.reuse_export and all(path.exists() for path in earlier):
            records_file, subjects_file, firsts_file = earlier
            export_seconds, export_peak = 0.0, None
            console.print(f"{records:,} records: the Parquet in {parquet} reused, not timed")
        else:
            records_file, subjects_file, firsts_file = export_store(con, parquet)
            export_seconds = time.perf_counter() - start
            export_peak = phase_peak_mib()
            console.print(
                f"{records:,} records written to {parquet} in {export_seconds:.1f} s, peak "
                + ("n/a" if export_peak is None else f"{export_peak:,.0f} MiB")
                + f" (DuckDB memory limit {settings['memory_limit']})"
            )

        console.rule("session start-up")
        start = time.perf_counter()
        if args.master:
            # Memory is the launcher's to set, before the driver's JVM starts.
            os.environ.setdefault(
                "PYSPARK_SUBMIT_ARGS",
                f"--driver-memory {args.driver_memory} "
                f"--conf spark.executor.memory={args.executor_memory} pyspark-shell",
            )
            spark = cluster_session(args.master)
            spark.conf.set("spark.sql.shuffle.partitions", str(args.shuffle_partitions))
        else:
            spark = local_session(
                cores=args.cores,
                shuffle_partitions=args.shuffle_partitions,
                driver_memory=args.driver_memory,
            )
        spark.range(1).count()
        startup = time.perf_counter() - start
        where = args.master or f"local[{args.cores}]"
        console.print(f"Spark {spark.version} {where} ready in {startup:.1f} s")
        try:
            engine = SparkEngine(spark, records_file, subjects_file, firsts_file)
            spark.read.parquet(str(records_file)).createOrReplaceTempView("records")
            floor = floor_spark_sql(rb, at)
            (workdir / f"spark-floor-{tag}.sql").write_text(floor + "\n")
            score_runs: list[float] = []
            floor_runs: list[float] = []
            stage_runs: list[dict[str, float]] = []
            write_runs: list[float] = []
            load_before = os.getloadavg()
            for i in range(args.runs):
                console.rule(f"run {i + 1}/{args.runs}")
                stages: dict[str, float] = {}
                start = time.perf_counter()
                frames = engine.score_frames(rb, at, known_at, timings=stages)
                written_from = time.perf_counter()
                write_snapshot(frames, snapshot_dir)
                score_runs.append(time.perf_counter() - start)
                write_runs.append(time.perf_counter() - written_from)
                stage_runs.append(stages)
                engine.release()
                console.print(
                    f"  score {score_runs[-1]:.1f} s (cached stages "
                    + ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
                    + f"; snapshot written in {write_runs[-1]:.1f})"
                )
                start = time.perf_counter()
                spark.sql(floor).write.mode("overwrite").parquet(str(floor_dir))
                floor_runs.append(time.perf_counter() - start)
                console.print(f"  floor {floor_runs[-1]:.1f} s")
            load_after = os.getloadavg()
            floor_subjects = spark.read.parquet(str(floor_dir)).count()
            jvm_peak = jvm_peak_mib(spark)
            executor_peak = executor_peak_mib()
            version = spark.version
        finally:
            spark.stop()

        diffs = None
        # The snapshot's scores hold only the rows that differ from the base's default, so the
        # population comes from the DuckDB engine's snapshot; without it, the rows scored.
        subjects = int(
            duckdb.sql(
                "SELECT count(*) FROM read_parquet('"
                + str(snapshot_dir / "snapshot_scores.parquet" / "*.parquet").replace("'", "''")
                + "')"
            ).fetchall()[0][0]
        )
        if not args.no_verify:
            console.rule("identity with the DuckDB engine")
            snap = ws.score(at, known_at)
            diffs = differences(con, snap.snapshot_id, snapshot_dir)
            console.print(f"rows that differ, per table: {diffs}")
            subjects = snap.subjects
    finally:
        ws.close()

    best = score_runs.index(min(score_runs))
    results = Results(
        residents=args.residents,
        years=args.years,
        seed=args.seed,
        cores=args.cores,
        shuffle_partitions=args.shuffle_partitions,
        driver_memory=args.driver_memory,
        spark_version=version,
        machine=machine(),
        at=at.isoformat(),
        known_at=known_at.isoformat(),
        records=records,
        subjects=subjects,
        duckdb_settings=settings,
        export_seconds=round(export_seconds, 3),
        export_peak_mib=export_peak,
        startup_seconds=round(startup, 3),
        score_seconds=min(score_runs),
        score_runs=[round(x, 3) for x in score_runs],
        stage_seconds={k: round(v, 3) for k, v in stage_runs[best].items()},
        write_seconds=round(write_runs[best], 3),
        floor_seconds=min(floor_runs),
        floor_runs=[round(x, 3) for x in floor_runs],
        floor_subjects=floor_subjects,
        load_average={
            "before": [round(x, 2) for x in load_before],
            "after": [round(x, 2) for x in load_after],
        },
        jvm_peak_mib=jvm_peak,
        executor_peak_mib=executor_peak,
        master=args.master or f"local[{args.cores}]",
        python_peak_mib=round(ru_maxrss_mib(), 1),
        differences=diffs,
    )
    console.rule("summary")
    console.print(
        f"session start-up {results.startup_seconds:.1f} s; "
        f"full score {results.score_seconds:.1f} s (runs {results.score_runs}); "
        f"floor {results.floor_seconds:.1f} s (runs "
        f"{results.floor_runs}); full/floor {results.ratio:.1f}x; load average before / after "
        f"{results.load_average['before']} / {results.load_average['after']}"
    )
    data = asdict(results)
    data["ratio"] = results.ratio
    data["markdown_row"] = results.markdown_row()
    out = workdir / f"spark-results-{tag}-{'cluster' if args.master else f'c{args.cores}'}.json"
    out.write_text(json.dumps(data, indent=2, default=str) + "\n")
    console.print(f"results written to {out}")
    print(results.markdown_header())
    print(results.markdown_row())
    for path in (floor_dir,):
        shutil.rmtree(path, ignore_errors=True)
    if diffs is not None and any(diffs.values()):
        console.print("[bold red]the Spark snapshot differs from the DuckDB engine's[/]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
