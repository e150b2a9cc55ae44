"""Benchmark: every statement of a daily update timed, on the store incremental_bench.py left.

``incremental_bench.py`` leaves ``<workdir>/incremental-home-N-Y-S``: the base snapshot at the
synthetic window's last moment (T1, K1) and a day of records received after it. This brings the
base forward to (T1 + 1 day, K1 + 1 day) with ``DuckDBEngine.update``, as the benchmark's
scenario (ii) does (``--day-passing``: a microsecond before the day's records arrive, which is
scenario (i)), and times each statement the engine sends to DuckDB (the store's
connection is wrapped, so the engine's own code runs unchanged). Each round commits an update
snapshot, as the benchmark does; the base stays the same:

    .venv/bin/python bench/update_profile.py \\
        --home bench/out/incremental-home-21900000-8-0 --rounds 3

The statements are reported in the order they ran, each with the lines that name it (the
first of the SQL), and the total per update; ``--top`` sorts the slowest first instead.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import time
from pathlib import Path
from typing import Any

import duckdb
from score_bench import configure

from civiscore.store.base import Snapshot
from civiscore.workspace import Workspace


class _Timed:
    """A DuckDB connection or cursor whose ``execute`` is timed; everything else passes through."""

    def __init__(
        self,
        inner: duckdb.DuckDBPyConnection,
        log: list[tuple[str, float]],
        analyze: tuple[str, ...] = (),
    ):
        self._inner = inner
        self._log = log
        self._analyze = analyze

    def execute(self, sql: str, *args: Any, **kwargs: Any) -> _Timed:
        explain = any(name == label(sql) for name in self._analyze)
        start = time.perf_counter()
        if explain:
            # Runs the statement too (DuckDB executes what it analyses).
            plan = self._inner.execute("EXPLAIN ANALYZE " + sql, *args, **kwargs).fetchall()
            print(plan[0][1])
        else:
            self._inner.execute(sql, *args, **kwargs)
        self._log.append((sql, time.perf_counter() - start))
        return self

    def cursor(self) -> _Timed:
        return _Timed(self._inner.cursor(), self._log, self._analyze)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def label(sql: str) -> str:
    """A short name for a statement: what it creates or inserts into, else its first words."""
    flat = " ".join(sql.split())
    made = re.match(
        r"(CREATE (?:OR REPLACE )?TEMP (?:TABLE|VIEW) \w+|INSERT INTO \w+|DELETE FROM \w+)", flat
    )
    return made.group(1) if made else flat[:70]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--home", type=Path, required=True, help="a store incremental_bench.py left")
    p.add_argument(
        "--base",
        type=int,
        default=None,
        help="the base snapshot (default: the one the store's first update was brought forward "
        "from, which is the benchmark's base; 1 when there is no update yet)",
    )
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--top", type=int, default=0, help="only the N slowest statements")
    p.add_argument(
        "--day-passing",
        action="store_true",
        help="scenario (i), a day passing: known at a microsecond before the day's records "
        "were received, so that the update sees none of them",
    )
    p.add_argument(
        "--analyze",
        action="append",
        default=[],
        help="print DuckDB's EXPLAIN ANALYZE of the statement so labelled, e.g. "
        "'CREATE TEMP TABLE points' (repeatable)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--memory-limit", default="6GB")
    args = p.parse_args(argv)
    ws = Workspace.open(args.home)
    try:
        con = ws.store.con
        configure(con, args.threads, args.memory_limit)
        if args.base is None:
            # A reused home's copy can hold that home's own earlier score as snapshot 1, at a
            # later K than the benchmark's base: a "day passing" from it would see the day.
            try:
                first = con.execute(
                    "SELECT base_snapshot_id FROM snapshot_lineage "
                    "WHERE base_snapshot_id IS NOT NULL ORDER BY snapshot_id LIMIT 1"
                ).fetchall()
            except duckdb.CatalogException:  # a store no update has written to
                first = []
            args.base = int(first[0][0]) if first else 1
        row = con.execute(
            "SELECT snapshot_id, rulebook_version, as_of, known_at, created_at, subjects "
            "FROM snapshots WHERE snapshot_id = ?",
            [args.base],
        ).fetchall()
        if not row:
            raise SystemExit(f"{args.home}: no snapshot {args.base}")
        base = Snapshot(*row[0])
        at, known_at = base.at + dt.timedelta(days=1), base.known_at + dt.timedelta(days=1)
        if args.day_passing:
            # incremental_bench.py adds the day's records received at exactly this K.
            known_at -= dt.timedelta(microseconds=1)
        rb = ws.rulebook_at(at)
        for r in range(args.rounds):
            log: list[tuple[str, float]] = []
            ws.store.con = _Timed(con, log, tuple(args.analyze))  # type: ignore[assignment]
            start = time.perf_counter()
            try:
                update = ws.engine.update(rb, base, at, known_at, full_share=None)
            finally:
                ws.store.con = con
            seconds = time.perf_counter() - start
            rows = sorted(log, key=lambda x: -x[1])[: args.top] if args.top else log
            for sql, took in rows:
                print(f"{took:7.3f}  {label(sql)}")
            print(
                json.dumps(
                    {
                        "round": r + 1,
                        "update_seconds": round(seconds, 3),
                        "statements": len(log),
                        "statements_seconds": round(sum(t for _, t in log), 3),
                        "affected": update.affected_subjects,
                        "method": update.method,
                    }
                ),
                flush=True,
            )
        return 0
    finally:
        ws.close()


if __name__ == "__main__":
    raise SystemExit(main())
