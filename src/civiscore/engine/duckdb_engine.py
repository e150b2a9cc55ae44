"""Run the scoring plan on the embedded DuckDB store."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import duckdb

from civiscore.engine.plan import stages
from civiscore.rulebook.model import Rulebook
from civiscore.store.base import Snapshot
from civiscore.store.duckdb_store import DuckDBStore, first_row
from civiscore.timeutil import now_local


class DuckDBEngine:
    """Set-based engine: each stage of the plan becomes a temporary table on a cursor.

    A cursor has its own temporary schema, so questions asked side by side don't collide.
    """

    def __init__(self, store: DuckDBStore):
        self.store = store

    def evaluate(
        self,
        rb: Rulebook,
        at: dt.datetime,
        known_at: dt.datetime,
        sid: int | Sequence[int] | None = None,
    ) -> duckdb.DuckDBPyConnection:
        """Build every stage for (T, K[, subjects]); returns the cursor holding them."""
        cur = self.store.con.cursor()
        for stage in stages(rb, at, known_at, sid):
            kind = "VIEW" if stage.view else "TABLE"
            cur.execute(f"CREATE OR REPLACE TEMP {kind} {stage.name} AS {stage.sql}")
        return cur

    def score(
        self,
        rb: Rulebook,
        at: dt.datetime,
        known_at: dt.datetime,
        created_at: dt.datetime | None = None,
    ) -> Snapshot:
        """Materialise scores, bands and active listings for the whole population."""
        cur = self.evaluate(rb, at, known_at)
        created = created_at or now_local()
        try:
            cur.execute("BEGIN TRANSACTION")
            row = first_row(cur, "SELECT coalesce(max(snapshot_id), 0) + 1 FROM snapshots")
            assert row is not None
            sid_ = int(row[0])
            cur.execute(
                "INSERT INTO snapshot_scores "
                "SELECT $id, sid, score, band, band <> raw_band FROM scores",
                {"id": sid_},
            )
            cur.execute(
                "INSERT INTO snapshot_contexts "
                "SELECT $id, sid, context, sum(points) FROM points GROUP BY sid, context",
                {"id": sid_},
            )
            cur.execute(
                """INSERT INTO snapshot_listings
                SELECT $id, sid, listing, list, since, until, record_id, department, reference
                FROM (SELECT * FROM decision_listings WHERE list = 'blacklist'
                      UNION ALL SELECT * FROM conduct_listings WHERE list = 'blacklist'
                      UNION ALL SELECT * FROM benefits)""",
                {"id": sid_},
            )
            count = first_row(cur, "SELECT count(*) FROM scores")
            assert count is not None
            cur.execute(
                "INSERT INTO snapshots VALUES (?, ?, ?, ?, ?, ?)",
                [sid_, rb.version, at, known_at, created, int(count[0])],
            )
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        finally:
            cur.close()
        return Snapshot(sid_, rb.version, at, known_at, created, int(count[0]))
