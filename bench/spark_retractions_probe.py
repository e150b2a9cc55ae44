"""Probe: what dropping withdrawn records by their ids costs the Spark engine's scan.

Run from the repository root, after ``bench/spark_bench.py`` has written the Parquet::

    .venv/bin/python bench/spark_retractions_probe.py --residents 21900000 --years 8

In one local Spark session, over ``<workdir>/parquet-<tag>/records.parquet``, the records still
in scope at (T, K) are counted per subject three ways, alternating, ``--runs`` times each:

- **plain:** no retractions dropped (the baseline: the scan and the aggregation alone);
- **ids:** dropped as the plan's ``live`` stage drops them from records without
  ``withdrawn_since`` (before the eleventh session, from every export), a broadcast left join on
  (subject, department, record id) and a null test, which decodes and hashes two strings of
  every record;
- **subject first:** the records of subjects with no retraction kept by a join on the subject
  alone, and only the others' checked on their ids (two scans, unioned).

The withdrawn keys are computed and cached first, as the engine does. Prints each run, the
best of each and their ratios to ``plain``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pyspark.sql.functions import broadcast
from rich.console import Console

from civiscore.engine.spark_engine import local_session
from civiscore.synth.city import DEFAULT_END

console = Console(stderr=True, highlight=False)


def queries(T: str, K: str) -> dict[str, str]:
    scope = f"r.received_at <= {K} AND r.occurred_at <= {T} AND r.retracts IS NULL"
    ids = "w.sid = r.sid AND w.department = r.department AND w.record_id = r.record_id"
    return {
        "plain": f"SELECT r.sid, count(*) AS n FROM records r WHERE {scope} GROUP BY r.sid",
        "ids": f"""SELECT r.sid, count(*) AS n FROM records r LEFT JOIN withdrawn w ON {ids}
            WHERE {scope} AND w.sid IS NULL GROUP BY r.sid""",
        "subject first": f"""SELECT sid, count(*) AS n FROM (
              SELECT r.sid FROM records r LEFT ANTI JOIN withdrawn_sids s ON s.sid = r.sid
              WHERE {scope}
              UNION ALL
              SELECT r.sid FROM records r LEFT SEMI JOIN withdrawn_sids s ON s.sid = r.sid
              LEFT ANTI JOIN withdrawn w ON {ids}
              WHERE {scope}) x
            GROUP BY sid""",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--residents", type=int, default=1_000_000)
    p.add_argument("--years", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=Path("bench/out"))
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--shuffle-partitions", type=int, default=16)
    p.add_argument("--driver-memory", default="12g")
    p.add_argument("--runs", type=int, default=2)
    args = p.parse_args(argv)
    tag = f"{args.residents}-{args.years}-{args.seed}"
    records = args.workdir / f"parquet-{tag}" / "records.parquet"
    if not records.exists():
        console.print(f"no {records}: run bench/spark_bench.py with the same arguments first")
        return 2
    T = f"TIMESTAMP_NTZ'{DEFAULT_END.isoformat()} 23:59:59.999999'"
    K = "TIMESTAMP_NTZ'2100-01-01 00:00:00'"  # everything known
    spark = local_session(
        cores=args.cores,
        shuffle_partitions=args.shuffle_partitions,
        driver_memory=args.driver_memory,
    )
    try:
        spark.read.parquet(str(records)).createOrReplaceTempView("records")
        withdrawn = spark.sql(
            f"""SELECT department, retracts AS record_id, sid FROM records
            WHERE retracts IS NOT NULL AND received_at <= {K}
            GROUP BY department, retracts, sid"""
        ).cache()
        sids = withdrawn.select("sid").distinct().cache()
        console.print(f"{withdrawn.count():,} withdrawn records of {sids.count():,} subjects")
        broadcast(withdrawn).createOrReplaceTempView("withdrawn")
        broadcast(sids).createOrReplaceTempView("withdrawn_sids")
        times: dict[str, list[float]] = {}
        for run in range(args.runs):
            for name, sql in queries(T, K).items():
                start = time.perf_counter()
                spark.sql(sql).write.format("noop").mode("overwrite").save()
                times.setdefault(name, []).append(time.perf_counter() - start)
                console.print(f"  run {run + 1}: {name} {times[name][-1]:.1f} s")
    finally:
        spark.stop()
    plain = min(times["plain"])
    print("| way | runs (s) | best (s) | best / plain |\n|---|---|---:|---:|")
    for name, runs in times.items():
        listed = ", ".join(f"{t:.1f}" for t in runs)
        print(f"| {name} | {listed} | {min(runs):.1f} | {min(runs) / plain:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
