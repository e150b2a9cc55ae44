"""Where an ingest's time goes: each statement on the store's connection, timed.

Ingests department files, in the order given, into a fresh store at ``--home`` (deleted first),
with DuckDB configured as ``score_bench.py`` configures it, and prints per file the statements
that took longest (their time summed over repeats, and how many there were). The timings wrap
``store.con``, so they include what DuckDB does for a statement and nothing of the Python around
it; a file's wall time less its statements' is the rest (reading ahead, Arrow, rejects).

    .venv/bin/python bench/ingest_profile.py --home /tmp/profile-home \\
        blood_service=bench/out/city-21900000-8-0/blood_service.parquet \\
        civil_affairs=bench/out/city-21900000-8-0/civil_affairs.csv
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent))

from score_bench import configure

from civiscore.workspace import Workspace


class TimedConnection:
    """A DuckDB connection whose ``execute`` calls are timed into ``log`` by statement."""

    def __init__(self, con: duckdb.DuckDBPyConnection, log: dict[str, list[float]]):
        object.__setattr__(self, "_con", con)
        object.__setattr__(self, "_log", log)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)

    def execute(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return self._con.execute(sql, *args, **kwargs)
        finally:
            entry = self._log[re.sub(r"\s+", " ", str(sql)).strip()[:90]]
            entry[0] += time.perf_counter() - start
            entry[1] += 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("files", nargs="+", help="department=path, ingested in this order")
    p.add_argument("--home", type=Path, required=True, help="a scratch home, deleted first")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--memory-limit", default="6GB")
    p.add_argument("--top", type=int, default=14, help="statements shown per file")
    args = p.parse_args(argv)
    shutil.rmtree(args.home, ignore_errors=True)
    ws, _ = Workspace.init(args.home)
    con = ws.store.con
    print(configure(con, args.threads, args.memory_limit))
    try:
        for spec in args.files:
            department, _, path = spec.partition("=")
            log: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
            ws.store.con = TimedConnection(con, log)  # type: ignore[assignment]
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                summary = ws.ingest(department, Path(path))
            finally:
                ws.store.con = con
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            timed = sum(seconds for seconds, _ in log.values())
            print(
                f"== {department}: {summary.rows:,} rows, {wall:.1f} s wall, {cpu:.1f} CPU-s, "
                f"statements {timed:.1f} s"
            )
            ranked = sorted(log.items(), key=lambda kv: -kv[1][0])
            for statement, (seconds, count) in ranked[: args.top]:
                print(f"  {seconds:7.2f} s  x{int(count):<4} {statement}")
    finally:
        ws.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
