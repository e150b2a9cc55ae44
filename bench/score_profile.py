"""Benchmark: every statement of a full score timed, then the floor, on a store score_bench.py left.

``Workspace.score`` runs the plan's stages one by one and writes the snapshot's four tables;
this runs the same statements on the same kind of cursor (the engine's own ``_FRESH`` queries,
the same dropping of spent stages), times each, and then rolls the snapshot back so that the
store does not grow by a snapshot per run (the commit itself is not timed). The floor query of
``score_bench.py`` follows in the same process, so the ratio is taken within one run:

    .venv/bin/python bench/score_profile.py --home bench/out/home-21900000-8-0 --rounds 2

Run it once with ``PYTHONPATH`` set to another checkout's ``src`` to compare two versions,
alternating processes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path

from score_bench import configure, floor_sql

from civiscore.engine import duckdb_engine
from civiscore.engine.plan import spent_after, stages
from civiscore.store import firsts, withdrawals
from civiscore.synth.city import DEFAULT_END
from civiscore.workspace import Workspace


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--home", type=Path, required=True, help="a store score_bench.py left")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--memory-limit", default="6GB")
    args = p.parse_args(argv)
    ws = Workspace.open(args.home)
    try:
        con = ws.store.con
        configure(con, args.threads, args.memory_limit)
        at = dt.datetime.combine(DEFAULT_END, dt.time.max)
        known_at = con.execute("SELECT max(received_at) FROM records").fetchall()[0][0]
        rb = ws.rulebook_at(at)
        firsts.fold_new(con)
        withdrawals.fold_new(con)
        for r in range(args.rounds):
            seconds: dict[str, float] = {}
            start = time.perf_counter()
            cur = con.cursor()
            records = duckdb_engine._store_records(cur)
            population = firsts.population_sql(cur, records, at, known_at)
            retracted = withdrawals.plan_tables(cur, records)
            plan = stages(rb, at, known_at, None, population=population, withdrawals=retracted)
            spent = spent_after(plan, duckdb_engine._FRESH_READS)
            for stage in plan:
                kind = "VIEW" if stage.view else "TABLE"
                t = time.perf_counter()
                cur.execute(f"CREATE OR REPLACE TEMP {kind} {stage.name} AS {stage.sql}")
                for name in spent.get(stage.name, []):
                    cur.execute(f"DROP TABLE {name}")
                seconds[stage.name] = time.perf_counter() - t
            # The snapshot's count of its subjects, as the engine takes it: from the population
            # when its scores list only the rows that differ from the base's (a plan with a
            # `population` stage), else from the scores (earlier checkouts).
            t = time.perf_counter()
            counted = "population" if any(s.name == "population" for s in plan) else "scores"
            cur.execute(f"SELECT count(*) FROM {counted}").fetchall()
            seconds["count subjects"] = time.perf_counter() - t
            cur.execute("BEGIN TRANSACTION")
            snapshot_id = duckdb_engine._next_snapshot_id(cur)
            for table, sql in duckdb_engine._FRESH.items():
                t = time.perf_counter()
                cur.execute(f"INSERT INTO {table} {sql}", {"id": snapshot_id})
                seconds["write " + table] = time.perf_counter() - t
            cur.execute("ROLLBACK")
            cur.close()
            score = time.perf_counter() - start
            t = time.perf_counter()
            con.execute(floor_sql(rb, at))
            floor = time.perf_counter() - t
            con.execute("DROP TABLE floor")
            print(json.dumps({k: round(v, 2) for k, v in seconds.items()}))
            print(
                f"round {r + 1}: score {score:.2f} s (snapshot rolled back), floor {floor:.2f} s, "
                f"{score / floor:.2f}x",
                flush=True,
            )
        return 0
    finally:
        ws.close()


if __name__ == "__main__":
    raise SystemExit(main())
