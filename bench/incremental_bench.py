"""Benchmark: ``score --incremental`` against a full score on a large synthetic city.

Run from the repository root, after ``bench/score_bench.py`` has built the city's store (it is
built here the same way when missing)::

    .venv/bin/python bench/incremental_bench.py --residents 1000000 --years 8

What it does, in one process:

1. Copies ``<workdir>/home-<residents>-<years>-<seed>`` (the store ``score_bench.py`` left) to
   ``<workdir>/incremental-home-...`` so the original is not touched, and scores it in full at
   T1 = the end of the synthetic window's last day, K1 = the last ``received_at`` in the store.
   That snapshot is the base of every update below.
2. **(i) A day passes.** T2 = T1 + 1 day, K2 = K1 + 1 day, no new records. Alternately, best
   of ``--runs``: ``DuckDBEngine.update`` from the base to (T2, K2), then a full
   ``DuckDBEngine.score`` at (T2, K2). Each run writes a snapshot.
3. **(ii) A day of records.** About ``--new-records`` records (default: Beijing's 600,000 a
   day in proportion to ``--residents``) are added, all received at
   K1 + 1 day and occurring during T1's next day, with DuckDB SQL on the store: a reservoir
   sample of existing non-retraction records re-dated to that day (so busy subjects get more,
   as in the city), plus 0.5 % retractions of stored records, settlements of 1,000 unsettled
   judgment defaults, and 1,000 records of new subjects. Then update and full score,
   alternately, as in (i).
   The timed updates pass ``full_share=None`` so that the update path is measured even where
   more than ``FULL_SCORE_SHARE`` of the subjects are affected; one more call with the default
   shows what ``score --incremental`` does then (a full score, saying why).
   Each timed update is stored as a delta on the base (the affected subjects' rows only); one
   more update is then written in full, as when a chain of deltas is consolidated, and the
   operator's statistics are read from a delta and from a full snapshot.
4. **Identity.** For (i) and (ii), the last update's snapshot is compared with the last full
   snapshot at the same (T, K), row for row (``EXCEPT ALL`` both ways on scores, contexts and
   listings). Any difference fails the benchmark.
5. **IN lists.** ``DuckDBEngine.evaluate(..., sid=[...])`` (the plan's ``sid IN (...)``) for
   ``--in-list`` set sizes, against the update's way of running the plan for a set (a
   temporary ``records`` table of the set's records, then the population plan).

Results go to the console, to ``<workdir>/incremental-results-<tag>.json`` and as Markdown
rows on stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pyarrow as pa
from rich.console import Console
from score_bench import city, configure, ingest, machine

from civiscore.engine import tallies
from civiscore.engine.duckdb_engine import build_stages
from civiscore.engine.incremental import SNAPSHOT_TABLES, Update, timeline_since
from civiscore.rulebook.model import Rulebook
from civiscore.store import kind_records, locator, snapshots, timeline, withdrawals
from civiscore.store.base import Snapshot
from civiscore.synth.city import DEFAULT_END
from civiscore.timeutil import sql_timestamp
from civiscore.workspace import Workspace

console = Console(stderr=True, highlight=False)


def source_home(workdir: Path, residents: int, years: int, seed: int) -> Path:
    """The store ``score_bench.py`` made for these arguments; built the same way if missing."""
    home = workdir / f"home-{residents}-{years}-{seed}"
    if (home / "store.duckdb").exists():
        console.print(f"reusing the store in {home}")
        return home
    town = city(workdir, residents, years, seed)
    if home.exists():
        shutil.rmtree(home)
    ws, _ = Workspace.init(home)
    try:
        ingest(ws, town.departments)
    finally:
        ws.close()
    return home


def fresh_copy(src: Path, dst: Path) -> Path:
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    for name in ("store.duckdb", "pseudonym.key"):
        shutil.copy2(src / name, dst / name)
    return dst


def differences(ws: Workspace, a: Snapshot, b: Snapshot) -> dict[str, int]:
    """Rows in one snapshot and not the other, per table (0 everywhere: identical)."""
    out = {}
    for table, columns in SNAPSHOT_TABLES.items():

        def rows(snap: Snapshot, columns: str = columns, table: str = table) -> str:
            # A delta snapshot's rows resolved through its base, as every reader does.
            resolved = snapshots.resolved(ws.store.con, table, snap.snapshot_id)
            return f"SELECT {columns} FROM {resolved} s"

        row = ws.store.con.execute(
            f"SELECT count(*) FROM (({rows(a)} EXCEPT ALL {rows(b)}) "
            f"UNION ALL ({rows(b)} EXCEPT ALL {rows(a)}))"
        ).fetchall()[0]
        out[table] = int(row[0])
    return out


def add_a_day_of_records(
    ws: Workspace, n: int, day: dt.date, received: dt.datetime, seed: int
) -> dict[str, int]:
    """About ``n`` records occurring on ``day``, received at ``received``, in plain SQL."""
    con = ws.store.con
    start = sql_timestamp(dt.datetime.combine(day, dt.time()))
    params = {"received": received}
    batch = int(con.execute("SELECT coalesce(max(batch), 0) + 1 FROM records").fetchall()[0][0])
    tag = f"day{day:%Y%m%d}"
    within_day = f"{start} + to_microseconds(CAST(hash(n, {seed}) % 86400000000 AS BIGINT))"
    con.execute("BEGIN TRANSACTION")
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE picked AS
        SELECT department, sid, kind, quantity, reference, row_number() OVER () AS n
        FROM (SELECT department, sid, kind, quantity, reference FROM records
              WHERE retracts IS NULL)
        USING SAMPLE reservoir({int(n)} ROWS) REPEATABLE ({int(seed)})"""
    )
    con.execute(
        f"""INSERT INTO records
        SELECT department, '{tag}-' || n, sid, kind, {within_day}, quantity,
               CASE WHEN reference IS NULL THEN NULL
                    WHEN kind = 'court.judgment_settled' THEN reference
                    ELSE '{tag}-ref-' || n END,
               NULL, $received, {batch}
        FROM picked""",
        params,
    )
    con.execute(
        f"""INSERT INTO records
        SELECT department, '{tag}-x-' || n, sid, kind, {within_day}, quantity, reference,
               record_id, $received, {batch}
        FROM (SELECT *, row_number() OVER () AS n FROM (
                SELECT * FROM records r WHERE retracts IS NULL AND received_at < $received
                  AND NOT EXISTS (SELECT 1 FROM records x WHERE x.retracts = r.record_id
                                  AND x.department = r.department))
              USING SAMPLE reservoir({max(1, n // 200)} ROWS) REPEATABLE ({int(seed)}))""",
        params,
    )
    con.execute(
        f"""INSERT INTO records
        SELECT 'courts', '{tag}-s-' || n, sid, 'court.judgment_settled', {within_day}, NULL,
               reference, NULL, $received, {batch}
        FROM (SELECT *, row_number() OVER () AS n FROM (
                SELECT * FROM records d WHERE kind = 'court.judgment_default'
                  AND retracts IS NULL AND received_at < $received
                  AND NOT EXISTS (SELECT 1 FROM records s WHERE s.kind = 'court.judgment_settled'
                                  AND s.sid = d.sid AND s.reference = d.reference))
              USING SAMPLE reservoir(1000 ROWS) REPEATABLE ({int(seed)}))""",
        params,
    )
    first = int(con.execute("SELECT max(sid) FROM subjects").fetchall()[0][0]) + 1
    con.execute(
        f"""INSERT INTO subjects
        SELECT {first} + i, '{tag}-new-' || i, 'person' FROM range(1000) t(i)"""
    )
    con.execute(
        f"""INSERT INTO records
        SELECT 'transport', '{tag}-n-' || i, {first} + i, 'transport.speeding',
               {start} + INTERVAL 9 HOUR, 12.0, NULL, NULL, $received, {batch}
        FROM range(1000) t(i)""",
        params,
    )
    con.execute("COMMIT")
    counts = con.execute(
        f"""SELECT count(*), count(*) FILTER (retracts IS NOT NULL),
                  count(*) FILTER (kind = 'court.judgment_settled'), count(DISTINCT sid)
        FROM records WHERE batch = {batch}"""
    ).fetchall()[0]
    return {
        "records": int(counts[0]),
        "retractions": int(counts[1]),
        "settlements": int(counts[2]),
        "subjects": int(counts[3]),
        "new_subjects": 1000,
    }


def race(
    ws: Workspace,
    rb: Rulebook,
    base: Snapshot,
    at: dt.datetime,
    known_at: dt.datetime,
    runs: int,
    label: str,
    folds_seconds: float = 0.0,
) -> dict[str, Any]:
    """Update and full score, alternately; best of each, and the identity of the last pair.

    ``folds_seconds`` is what folding the day's records into the withdrawals, time and kind
    tables took before the first update (timed apart, so that every run starts from the same
    state). Ingest folds the first two after each department's file; here the day is added by
    SQL, so it is done once for every department. It is reported beside the update and added to
    it in ``ratio_with_folds``.
    """
    updates: list[float] = []
    fulls: list[float] = []
    steps: list[dict[str, float]] = []
    loads: list[float] = []
    update: Update | None = None
    full: Snapshot | None = None
    for i in range(runs):
        loads.append(os.getloadavg()[0])
        timings: dict[str, float] = {}
        start = time.perf_counter()
        update = ws.engine.update(rb, base, at, known_at, timings=timings, full_share=None)
        updates.append(time.perf_counter() - start)
        steps.append(timings)
        start = time.perf_counter()
        full = ws.engine.score(rb, at, known_at)
        fulls.append(time.perf_counter() - start)
        console.print(
            f"  {label} run {i + 1}/{runs}: update {updates[-1]:.2f} s by {update.method} "
            f"({update.affected_subjects:,} subjects rescored), full {fulls[-1]:.2f} s, "
            f"load {loads[-1]:.1f}"
        )
    assert update is not None and full is not None
    assert update.full_reason is None, update.full_reason
    assert update.method == "tallies", update.records_reason
    diff = differences(ws, update.snapshot, full)
    console.print(f"  {label} identity (rows differing per table): {diff}")
    # What `score --incremental` does by default (it scores everyone past FULL_SCORE_SHARE).
    start = time.perf_counter()
    default = ws.engine.update(rb, base, at, known_at)
    default_seconds = time.perf_counter() - start
    console.print(
        f"  {label} with the default share: {default_seconds:.2f} s, "
        f"{default.full_reason or 'an update'}"
    )
    # The update above was stored as a delta on the base; what consolidating a chain costs (an
    # update written in full, as every update was before deltas), once, and what reading the
    # two kinds of snapshot costs (the operator's statistics).
    with patch.object(snapshots, "MAX_DEPTH", 0):
        start = time.perf_counter()
        consolidated = ws.engine.update(rb, base, at, known_at, full_share=None)
        consolidate_seconds = time.perf_counter() - start
    reads = {}
    for name, snap in (("delta", update.snapshot), ("full", full)):
        start = time.perf_counter()
        ws.stats(snap)
        reads[name] = time.perf_counter() - start
    console.print(
        f"  {label} consolidated update {consolidate_seconds:.2f} s; statistics read from the "
        f"delta {reads['delta']:.3f} s, from a full snapshot {reads['full']:.3f} s"
    )
    assert not any(differences(ws, consolidated.snapshot, full).values())
    best = updates.index(min(updates))
    return {
        "stored_as": "delta"
        if len(snapshots.chain(ws.store.con, update.snapshot.snapshot_id)) > 1
        else "full",
        "consolidated_update_seconds": consolidate_seconds,
        "stats_seconds": reads,
        "at": at.isoformat(),
        "known_at": known_at.isoformat(),
        "affected_subjects": update.affected_subjects,
        "subjects": full.subjects,
        "update_seconds": min(updates),
        "update_runs": updates,
        "full_seconds": min(fulls),
        "full_runs": fulls,
        "ratio": min(updates) / min(fulls),
        "method": update.method,
        "folds_seconds": folds_seconds,
        "update_with_folds_seconds": min(updates) + folds_seconds,
        "ratio_with_folds": (min(updates) + folds_seconds) / min(fulls),
        "update_steps_best_run": steps[best],
        "load_1min": loads,
        "rows_differing": diff,
        "identical": not any(diff.values()),
        "default_seconds": default_seconds,
        "default_full_reason": default.full_reason,
    }


def in_lists(
    ws: Workspace, rb: Rulebook, at: dt.datetime, known_at: dt.datetime, sizes: list[int]
) -> list[dict[str, Any]]:
    """The plan for a set of subjects: ``sid IN (...)`` against a table of their records."""
    con = ws.store.con
    database = con.execute("SELECT current_database()").fetchall()[0][0]
    out = []
    for n in sizes:
        sids = [
            int(r[0])
            for r in con.execute(
                f"SELECT sid FROM subjects ORDER BY hash(sid) LIMIT {int(n)}"
            ).fetchall()
        ]
        start = time.perf_counter()
        ws.engine.evaluate(rb, at, known_at, sids).close()
        listed = time.perf_counter() - start
        cur = con.cursor()
        try:
            start = time.perf_counter()
            cur.register("chosen_list", pa.table({"sid": pa.array(sids, pa.int64())}))
            cur.execute("CREATE TEMP TABLE chosen AS SELECT sid FROM chosen_list")
            cur.execute(
                f'CREATE TEMP TABLE records AS SELECT * FROM "{database}".main.records '
                "WHERE sid IN (SELECT sid FROM chosen)"
            )
            build_stages(cur, rb, at, known_at, None)
            shadow = time.perf_counter() - start
        finally:
            cur.close()
        console.print(
            f"  {n:>7,} subjects: evaluate with sid IN (...) {listed:7.2f} s, "
            f"with a table of their records {shadow:5.2f} s"
        )
        out.append({"subjects": n, "in_list_seconds": listed, "records_table_seconds": shadow})
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--residents", type=int, default=1_000_000)
    p.add_argument("--years", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=Path("bench/out"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--memory-limit", default="6GB")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument(
        "--new-records",
        type=int,
        default=None,
        help="records in scenario (ii); default Beijing's 600,000 a day scaled to --residents",
    )
    p.add_argument(
        "--in-list",
        default="1000,10000,100000,300000",
        help="comma-separated set sizes for the IN-list measurement; empty to skip",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir: Path = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    tag = f"{args.residents}-{args.years}-{args.seed}"
    home = fresh_copy(
        source_home(workdir, args.residents, args.years, args.seed),
        workdir / f"incremental-home-{tag}",
    )
    ws = Workspace.open(home)
    try:
        settings = configure(ws.store.con, args.threads, args.memory_limit)
        con = ws.store.con
        records = int(con.execute("SELECT count(*) FROM records").fetchall()[0][0])
        t1 = dt.datetime.combine(DEFAULT_END, dt.time.max)
        k1 = con.execute("SELECT max(received_at) FROM records").fetchall()[0][0]
        rb = ws.rulebook_at(t1)
        console.rule("base snapshot: full score at (T1, K1)")
        start = time.perf_counter()
        base = ws.engine.score(rb, t1, k1)
        base_seconds = time.perf_counter() - start
        console.print(
            f"{records:,} records, {base.subjects:,} subjects; base snapshot "
            f"{base.snapshot_id} in {base_seconds:.2f} s"
        )
        t2, k2 = t1 + dt.timedelta(days=1), k1 + dt.timedelta(days=1)
        # Once per rulebook kind set: the side table of the kinds listings read.
        start = time.perf_counter()
        kind_records.bring_to(con, tallies.listing_kinds(rb), records)
        kinds_seconds = time.perf_counter() - start
        console.print(f"kind_records table built in {kinds_seconds:.2f} s")
        # Once per store built by an older civiscore: the locator with the keys of the records
        # (ingest keeps it current; the fold of a day's retractions reads it).
        start = time.perf_counter()
        locator.index_new(con)
        locator_seconds = time.perf_counter() - start
        console.print(f"locator brought up to date in {locator_seconds:.2f} s")
        # Once per store: the records by occurrence, where each day's ending clocks are found.
        start = time.perf_counter()
        timeline.bring_to(con, timeline_since(rb, base.at))
        timeline_seconds = time.perf_counter() - start
        console.print(f"records_by_time table built in {timeline_seconds:.2f} s")

        console.rule("(i) one day passes, no new records")
        passage = race(ws, rb, base, t2, k2, args.runs, "(i)")

        sizes = [int(s) for s in args.in_list.split(",") if s.strip()]
        console.rule("the plan for a set of subjects: IN list against a table of records")
        lists = in_lists(ws, rb, t2, k2, sizes) if sizes else []

        new_records = args.new_records or round(600_000 * args.residents / 21_900_000)
        console.rule(f"(ii) a day of about {new_records:,} records")
        start = time.perf_counter()
        added = add_a_day_of_records(
            ws, new_records, DEFAULT_END + dt.timedelta(days=1), k2, args.seed + 7
        )
        add_seconds = time.perf_counter() - start
        console.print(f"  added {added} in {add_seconds:.2f} s")
        # What each update would otherwise do on its first run only: fold the day's records.
        start = time.perf_counter()
        withdrawals.fold_new(con)
        timeline.fold_new(con)
        kind_records.bring_to(
            con,
            tallies.listing_kinds(rb),
            int(con.execute("SELECT count(*) FROM records").fetchall()[0][0]),
        )
        folds_seconds = time.perf_counter() - start
        console.print(
            f"  folded the day into the withdrawals, time and kind tables in {folds_seconds:.2f} s"
        )
        day = race(ws, rb, base, t2, k2, args.runs, "(ii)", folds_seconds)
    finally:
        ws.close()

    results = {
        "residents": args.residents,
        "years": args.years,
        "seed": args.seed,
        "settings": settings,
        "machine": machine(),
        "records": records,
        "base": {
            "snapshot_id": base.snapshot_id,
            "at": t1.isoformat(),
            "known_at": k1.isoformat(),
            "subjects": base.subjects,
            "seconds": base_seconds,
            "kind_records_build_seconds": kinds_seconds,
            "records_by_time_build_seconds": timeline_seconds,
            "locator_seconds": locator_seconds,
        },
        "passage_of_a_day": passage,
        "a_day_of_records": {"added": added, "add_seconds": add_seconds, **day},
        "in_lists": lists,
    }
    out_file = workdir / f"incremental-results-{tag}-t{args.threads}-{args.memory_limit}.json"
    out_file.write_text(json.dumps(results, indent=2, default=str))
    console.print(f"results written to {out_file}")

    print(
        "| scenario | residents | records | subjects rescored | update (s) | the day's folds (s) "
        "| full (s) | update/full | with the folds | identical |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    rows = (
        ("(i) a day passes", records, passage),
        (f"(ii) a day of {added['records']:,} records", records + added["records"], day),
    )
    for name, n, r in rows:
        print(
            f"| {name} | {args.residents:,} | {n:,} | {r['affected_subjects']:,} "
            f"| {r['update_seconds']:.2f} | {r['folds_seconds']:.2f} | {r['full_seconds']:.2f} "
            f"| {100 * r['ratio']:.1f} % | {100 * r['ratio_with_folds']:.1f} % "
            f"| {'yes' if r['identical'] else 'NO'} |"
        )
    ok = passage["identical"] and day["identical"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
