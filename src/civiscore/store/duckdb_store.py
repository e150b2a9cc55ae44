"""The embedded record store: one DuckDB file under the civiscore home.

Records are append-only. Each ingest batch is one transaction, so a crash leaves either the
whole batch or none of it, and re-running an ingest skips what is already stored.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from civiscore.store.base import BatchResult, Snapshot, StoredRulebook

SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS subjects (
    sid BIGINT NOT NULL,
    pseudonym VARCHAR NOT NULL,
    subject_type VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    department VARCHAR NOT NULL,
    record_id VARCHAR NOT NULL,
    sid BIGINT NOT NULL,
    kind VARCHAR NOT NULL,
    occurred_at TIMESTAMP NOT NULL,
    quantity DOUBLE,
    reference VARCHAR,
    retracts VARCHAR,
    received_at TIMESTAMP NOT NULL,
    batch BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS rulebooks (
    version VARCHAR NOT NULL,
    effective_from DATE NOT NULL,
    loaded_at TIMESTAMP NOT NULL,
    source VARCHAR NOT NULL,
    yaml VARCHAR NOT NULL,
    sha256 VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS ingest_runs (
    batch BIGINT NOT NULL,
    department VARCHAR NOT NULL,
    file VARCHAR NOT NULL,
    received_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP,
    rows BIGINT,
    accepted BIGINT,
    duplicates BIGINT,
    rejected BIGINT,
    rejects_file VARCHAR
);
CREATE TABLE IF NOT EXISTS snapshots (
    snapshot_id BIGINT NOT NULL,
    rulebook_version VARCHAR NOT NULL,
    as_of TIMESTAMP NOT NULL,
    known_at TIMESTAMP NOT NULL,
    created_at TIMESTAMP NOT NULL,
    subjects BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshot_scores (
    snapshot_id BIGINT NOT NULL,
    sid BIGINT NOT NULL,
    score DECIMAL(18, 2) NOT NULL,
    band VARCHAR NOT NULL,
    band_capped BOOLEAN NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshot_contexts (
    snapshot_id BIGINT NOT NULL,
    sid BIGINT NOT NULL,
    context VARCHAR NOT NULL,
    points DECIMAL(18, 2) NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshot_listings (
    snapshot_id BIGINT NOT NULL,
    sid BIGINT NOT NULL,
    listing VARCHAR NOT NULL,
    list VARCHAR NOT NULL,
    since TIMESTAMP,
    until TIMESTAMP,
    record_id VARCHAR,
    department VARCHAR,
    reference VARCHAR
);
"""

_SAME = " AND ".join(
    f"a.{c} IS NOT DISTINCT FROM b.{c}"
    for c in ("sid", "kind", "occurred_at", "quantity", "reference", "retracts")
)


def first_row(
    con: duckdb.DuckDBPyConnection, sql: str, params: object = None
) -> tuple[Any, ...] | None:
    """The first row of a query, fetching to the end (DuckDB 2 refuses unfinished results)."""
    result = con.execute(sql, params) if params is not None else con.execute(sql)
    rows = result.fetchall()
    return rows[0] if rows else None


class StoreMissing(FileNotFoundError):
    """No store at the given home: run ``civiscore init`` first."""


class DuckDBStore:
    """Append-only record store in ``<home>/store.duckdb``."""

    FILE = "store.duckdb"

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path | None):
        self.con = con
        self.path = path

    @classmethod
    def create(cls, home: Path) -> DuckDBStore:
        home.mkdir(parents=True, exist_ok=True)
        path = home / cls.FILE
        con = duckdb.connect(str(path))
        con.execute(_SCHEMA)
        con.execute(
            "INSERT INTO meta SELECT 'schema_version', ? WHERE NOT EXISTS "
            "(SELECT 1 FROM meta WHERE key = 'schema_version')",
            [SCHEMA_VERSION],
        )
        return cls(con, path)

    @classmethod
    def open(cls, home: Path, *, read_only: bool = False) -> DuckDBStore:
        path = home / cls.FILE
        if not path.exists():
            raise StoreMissing(
                f"no civiscore store at {path}; run `civiscore --home {home} init` first"
            )
        return cls(duckdb.connect(str(path), read_only=read_only), path)

    @classmethod
    def memory(cls) -> DuckDBStore:
        con = duckdb.connect()
        con.execute(_SCHEMA)
        return cls(con, None)

    def close(self) -> None:
        self.con.close()

    # -- ingestion ---------------------------------------------------------------------------

    def next_batch_id(self) -> int:
        row = first_row(self.con, "SELECT coalesce(max(batch), 0) + 1 FROM ingest_runs")
        assert row is not None
        return int(row[0])

    def start_run(self, batch: int, department: str, file: str, received_at: dt.datetime) -> None:
        self.con.execute(
            "INSERT INTO ingest_runs (batch, department, file, received_at) VALUES (?, ?, ?, ?)",
            [batch, department, file, received_at],
        )

    def finish_run(
        self,
        batch: int,
        *,
        rows: int,
        accepted: int,
        duplicates: int,
        rejected: int,
        rejects_file: str | None,
        finished_at: dt.datetime,
    ) -> None:
        self.con.execute(
            "UPDATE ingest_runs SET finished_at = ?, rows = ?, accepted = ?, duplicates = ?, "
            "rejected = ?, rejects_file = ? WHERE batch = ?",
            [finished_at, rows, accepted, duplicates, rejected, rejects_file, batch],
        )

    def write_batch(
        self, department: str, batch: pa.Table, received_at: dt.datetime, run: int = 0
    ) -> BatchResult:
        """Store the new rows of a validated batch in one transaction.

        A row whose ``record_id`` is already stored for the department with the same content
        is a duplicate (re-ingest); with different content it is a conflict, left for the
        caller to reject: corrections are new records that retract the old one.
        """
        con = self.con
        con.register("incoming", batch)
        try:
            con.execute("BEGIN TRANSACTION")
            con.execute(
                """
                INSERT INTO subjects
                SELECT (SELECT coalesce(max(sid), 0) FROM subjects)
                       + row_number() OVER (ORDER BY n.pseudonym), n.pseudonym, n.subject_type
                FROM (SELECT DISTINCT pseudonym, subject_type FROM incoming) n
                WHERE NOT EXISTS (SELECT 1 FROM subjects s WHERE s.pseudonym = n.pseudonym)
                """
            )
            con.execute(
                """
                CREATE OR REPLACE TEMP TABLE cand AS
                SELECT i.row, i.line, i.record_id, s.sid, i.kind, i.occurred_at, i.quantity,
                       i.reference, i.retracts,
                       row_number() OVER (PARTITION BY i.record_id ORDER BY i.row) AS nth
                FROM incoming i JOIN subjects s ON s.pseudonym = i.pseudonym
                """
            )
            con.execute(
                f"""
                CREATE OR REPLACE TEMP TABLE classified AS
                SELECT a.*,
                  CASE
                    WHEN s.record_id IS NOT NULL THEN
                      CASE WHEN {_SAME.replace("b.", "s.")} THEN 'duplicate' ELSE 'conflict' END
                    WHEN a.nth > 1 THEN
                      CASE WHEN {_SAME.replace("b.", "f.")} THEN 'duplicate' ELSE 'conflict' END
                    ELSE 'new'
                  END AS status
                FROM cand a
                LEFT JOIN (SELECT * FROM records WHERE department = $dep) s
                  ON s.record_id = a.record_id
                LEFT JOIN cand f ON f.record_id = a.record_id AND f.nth = 1 AND a.nth > 1
                """,
                {"dep": department},
            )
            con.execute(
                """
                INSERT INTO records
                SELECT $dep, record_id, sid, kind, occurred_at, quantity, reference, retracts,
                       $received, $run
                FROM classified WHERE status = 'new' ORDER BY row
                """,
                {"dep": department, "received": received_at, "run": run},
            )
            counts = first_row(
                con,
                "SELECT count(*) FILTER (status = 'new'), count(*) FILTER (status = 'duplicate') "
                "FROM classified",
            )
            conflicts = con.sql(
                "SELECT row, line, record_id FROM classified WHERE status = 'conflict' ORDER BY row"
            ).to_arrow_table()
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            con.unregister("incoming")
        assert counts is not None
        return BatchResult(int(counts[0]), int(counts[1]), conflicts)

    def withdraw(
        self, department: str, record_id: str, by_record_id: str, at: dt.datetime
    ) -> int | None:
        """Append a retraction of a stored record (an overturned appeal); returns its subject.

        History is not edited: the withdrawal is a new record, visible as such in every
        explanation from the moment it is stored.
        """
        row = first_row(
            self.con,
            "SELECT sid, kind FROM records WHERE department = ? AND record_id = ? "
            "AND retracts IS NULL",
            [department, record_id],
        )
        if row is None:
            return None
        self.con.execute(
            "INSERT INTO records SELECT ?, ?, ?, ?, ?, NULL, NULL, ?, ?, 0 WHERE NOT EXISTS "
            "(SELECT 1 FROM records WHERE department = ? AND record_id = ?)",
            [department, by_record_id, row[0], row[1], at, record_id, at, department, by_record_id],
        )
        return int(row[0])

    # -- subjects ----------------------------------------------------------------------------

    def sid_for(self, pseudonym: str) -> int | None:
        row = first_row(self.con, "SELECT sid FROM subjects WHERE pseudonym = ?", [pseudonym])
        return None if row is None else int(row[0])

    # -- rulebooks ---------------------------------------------------------------------------

    def save_rulebook(self, rb: StoredRulebook) -> None:
        self.con.execute(
            "INSERT INTO rulebooks VALUES (?, ?, ?, ?, ?, ?)",
            [rb.version, rb.effective_from, rb.loaded_at, rb.source, rb.yaml, rb.sha256],
        )

    def rulebooks(self) -> list[StoredRulebook]:
        rows = self.con.execute(
            "SELECT version, effective_from, loaded_at, source, yaml, sha256 FROM rulebooks "
            "ORDER BY effective_from, loaded_at"
        ).fetchall()
        return [StoredRulebook(*r) for r in rows]

    # -- snapshots ---------------------------------------------------------------------------

    def latest_snapshot(self, at: dt.datetime | None = None) -> Snapshot | None:
        sql = (
            "SELECT snapshot_id, rulebook_version, as_of, known_at, created_at, subjects "
            "FROM snapshots"
        )
        params: list[object] = []
        if at is not None:
            sql += " WHERE as_of = ?"
            params.append(at)
        sql += " ORDER BY created_at DESC, snapshot_id DESC LIMIT 1"
        row = first_row(self.con, sql, params)
        return None if row is None else Snapshot(*row)
