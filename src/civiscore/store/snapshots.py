"""Snapshots stored as deltas on the one before: a daily update keeps only what it rescored.

A full score writes every subject's rows under its snapshot number. An update
(:meth:`civiscore.engine.duckdb_engine.DuckDBEngine.update`) reruns the plan for the *affected*
subjects only, and copying everyone else's rows from its base cost it more than the rescoring
("Incremental scoring" in ``docs/benchmarks.md``). So an update stores a **delta**: its rows for
the affected subjects, the set of those subjects (``snapshot_affected``, including any whose
rows became none, such as a listing that ended) and its base (``snapshot_deltas``).

A snapshot's rows are then its own rows plus, going down the chain of bases to the full
snapshot at its end, each member's rows of the subjects no newer member rescored.
:func:`rows_sql` writes that union; every reader of a snapshot's rows goes through it.

The chain is bounded so that reads stay cheap: an update whose base is already
:data:`MAX_DEPTH` deltas deep, or whose chain has rescored more than :data:`CONSOLIDATE_SHARE`
of the subjects (counted with repeats), writes every subject's rows instead (a consolidation,
the cost a daily update paid every day before deltas).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import duckdb

# The snapshot tables and their columns after ``snapshot_id``, in schema order.
SNAPSHOT_TABLES: dict[str, str] = {
    "snapshot_scores": "sid, score, band, band_capped",
    "snapshot_contexts": "sid, context, points, records",
    "snapshot_listings": "sid, listing, list, since, until, record_id, department, reference",
    # What a daily update needs besides the answers (civiscore.engine.tallies): per subject,
    # capped rule (its place in the snapshot's rulebook version) and calendar year, the points
    # and records still counting before the cap.
    "snapshot_caps": "sid, rule_no, cap_year, total, records",
}

DELTAS = "snapshot_deltas"
AFFECTED = "snapshot_affected"

# A month of daily updates between consolidations at most.
MAX_DEPTH = 30
# Every read anti-joins the full snapshot's rows with the subjects rescored down the chain; this
# bounds that set. Measured one member deep at Beijing's size, the operator's statistics read
# from a delta in 0.6-0.9 s against 0.24 s from a full snapshot (docs/benchmarks.md).
CONSOLIDATE_SHARE = 0.25

_DDL = f"""
CREATE TABLE IF NOT EXISTS {DELTAS} (
    snapshot_id BIGINT NOT NULL,
    base_snapshot_id BIGINT NOT NULL,
    depth INTEGER NOT NULL,
    rescored BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS {AFFECTED} (
    snapshot_id BIGINT NOT NULL,
    sid BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshot_caps (
    snapshot_id BIGINT NOT NULL,
    sid BIGINT NOT NULL,
    rule_no INTEGER NOT NULL,
    cap_year INTEGER NOT NULL,
    total DECIMAL(18, 2) NOT NULL,
    records INTEGER NOT NULL
);
"""


def ensure(con: duckdb.DuckDBPyConnection) -> None:
    """Create the delta tables if this store does not have them yet.

    Stores from before the tallies get their columns; their snapshots' counts are NULL, and an
    update on such a base reads the records instead (:func:`civiscore.engine.tallies.usable`).
    """
    con.execute(_DDL)
    con.execute("ALTER TABLE snapshot_contexts ADD COLUMN IF NOT EXISTS records BIGINT")


@dataclass(frozen=True)
class Link:
    """Where a delta snapshot sits: ``depth`` deltas above a full snapshot, ``rescored``
    subjects rescored down its chain (with repeats)."""

    base_snapshot_id: int
    depth: int
    rescored: int


def chain(con: duckdb.DuckDBPyConnection, snapshot_id: int) -> list[int]:
    """The snapshot and its bases, newest first, down to the full snapshot it rests on.

    >>> con = duckdb.connect()
    >>> ensure(con)
    >>> _ = con.execute(f"INSERT INTO {DELTAS} VALUES (3, 2, 2, 20), (2, 1, 1, 10)")
    >>> chain(con, 3), chain(con, 1)
    ([3, 2, 1], [1])
    """
    try:
        bases = dict(con.execute(f"SELECT snapshot_id, base_snapshot_id FROM {DELTAS}").fetchall())
    except duckdb.CatalogException:  # a store opened read-only from before deltas: all full
        return [int(snapshot_id)]
    out = [int(snapshot_id)]
    while out[-1] in bases:
        out.append(int(bases[out[-1]]))
    return out


def link_for(
    con: duckdb.DuckDBPyConnection, base_snapshot_id: int, base_subjects: int, affected: int
) -> Link | None:
    """How an update of ``affected`` subjects on this base is stored: a delta, or None for a
    snapshot in full (the chain would be too deep or too much rescored)."""
    rows = con.execute(
        f"SELECT depth, rescored FROM {DELTAS} WHERE snapshot_id = ?", [base_snapshot_id]
    ).fetchall()
    row = rows[0] if rows else None
    depth, rescored = (int(row[0]), int(row[1])) if row else (0, 0)
    link = Link(base_snapshot_id, depth + 1, rescored + affected)
    if link.depth > MAX_DEPTH or link.rescored > CONSOLIDATE_SHARE * max(base_subjects, 1):
        return None
    return link


def record_delta(
    con: duckdb.DuckDBPyConnection, snapshot_id: int, link: Link, affected_table: str
) -> None:
    """Record that ``snapshot_id`` holds only the rows of the subjects in ``affected_table``."""
    con.execute(
        f"INSERT INTO {DELTAS} VALUES (?, ?, ?, ?)",
        [snapshot_id, link.base_snapshot_id, link.depth, link.rescored],
    )
    con.execute(f"INSERT INTO {AFFECTED} SELECT {int(snapshot_id)}, sid FROM {affected_table}")


def rows_sql(table: str, members: Sequence[int]) -> str:
    """A subquery of the rows of snapshot ``members[0]``, whose chain is ``members``.

    Columns: ``snapshot_id`` (always ``members[0]``) and the table's own
    (:data:`SNAPSHOT_TABLES`), as ``SELECT * FROM table WHERE snapshot_id = …`` gives for a
    snapshot stored in full.

    >>> print(rows_sql("snapshot_scores", [1]))
    (SELECT 1 AS snapshot_id, sid, score, band, band_capped FROM snapshot_scores WHERE snapshot_id = 1)
    """  # noqa: E501
    columns = SNAPSHOT_TABLES[table]
    top = int(members[0])
    parts = []
    for i, member in enumerate(members):
        where = f"snapshot_id = {int(member)}"
        if i:
            newer = ", ".join(str(int(m)) for m in members[:i])
            where += f" AND sid NOT IN (SELECT sid FROM {AFFECTED} WHERE snapshot_id IN ({newer}))"
        parts.append(f"SELECT {top} AS snapshot_id, {columns} FROM {table} WHERE {where}")
    return "(" + "\nUNION ALL ".join(parts) + ")"


def resolved(con: duckdb.DuckDBPyConnection, table: str, snapshot_id: int) -> str:
    """:func:`rows_sql` for a snapshot, its chain looked up in the store."""
    return rows_sql(table, chain(con, snapshot_id))
