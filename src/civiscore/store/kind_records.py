"""The records of a few kinds, kept apart so a daily update reads them without scanning all.

A daily update (:mod:`civiscore.engine.tallies`) brings points forward record by record, but a
listing is not a sum: whether a subject is listed at T depends on all of its decisions, their
settlements and its conduct within a window. For the few subjects whose listings can have
changed, the update reruns the plan's listing stages over their records of the kinds listings
read. At Beijing's size those subjects' records lie all over the 209-million-row table; this
table holds just the records of those kinds (a few percent of all), with their ``rowid``
(``row_id``), sorted by kind and occurrence within each fold. A day relists thousands of
subjects spread over every row group, so sorting by subject would skip none; sorted by
occurrence, the records past their kind's horizon (most conduct records) are skipped by zone
map. At Beijing's size that halved the read (0.12 to 0.06 s for a day of records).

Which kinds is up to the caller: the table remembers the set it holds (``meta`` key
``kind_records_kinds``) and is rebuilt, by one scan of ``records``, when asked for a kind it
does not hold (a rulebook version with a new kind of listing). Like the locator, it covers the
rows below a watermark (``meta`` key ``kind_records_upto``); :func:`bring_to` folds in the rows
up to a given count. Retractions are not kept: the update drops withdrawn rows with the store's
withdrawals tables (:mod:`civiscore.store.withdrawals`).
"""

from __future__ import annotations

import json
from collections.abc import Collection

import duckdb

from civiscore.store import watermark

TABLE = "kind_records"
_UPTO = "kind_records_upto"
_KINDS = "kind_records_kinds"

COLUMNS = (
    "department, record_id, sid, kind, occurred_at, quantity, reference, retracts, received_at"
)


def names_sql(kinds: Collection[str]) -> str:
    """The kinds as an SQL list of string literals (NULL for none)."""
    return ", ".join("'" + k.replace("'", "''") + "'" for k in sorted(kinds)) or "NULL"


def _rows(kinds: Collection[str], lo: int, hi: int) -> str:
    return f"""SELECT rowid AS row_id, {COLUMNS} FROM records
        WHERE rowid >= {int(lo)} AND rowid < {int(hi)} AND retracts IS NULL
          AND kind IN ({names_sql(kinds)})
        ORDER BY kind, occurred_at"""


def held(con: duckdb.DuckDBPyConnection) -> tuple[frozenset[str], int] | None:
    """The kinds the table holds and how many of the first records it covers; None if none."""
    upto = watermark.covered(con, TABLE, _UPTO)
    if upto is None:
        return None
    row = con.execute("SELECT value FROM meta WHERE key = ?", [_KINDS]).fetchall()
    return (frozenset(json.loads(row[0][0])) if row else frozenset()), upto


def bring_to(con: duckdb.DuckDBPyConnection, kinds: Collection[str], upto: int) -> int:
    """Make the table hold every record of ``kinds`` among the first ``upto``, in a transaction
    of its own; returns how many rows it read from ``records`` to do so.

    A table that already covers more rows is left as it is (readers bound what they take by
    ``row_id``); one that lacks a kind is rebuilt.
    """
    wanted = frozenset(kinds)
    con.execute("BEGIN TRANSACTION")
    try:
        now = held(con)
        if now is None or not wanted <= now[0]:
            con.execute(
                f"CREATE OR REPLACE TABLE {TABLE} AS {_rows(wanted, 0, upto)}"
                if now is None
                else f"DELETE FROM {TABLE}; INSERT INTO {TABLE} {_rows(wanted, 0, upto)}"
            )
            _set(con, _KINDS, json.dumps(sorted(wanted)))
            _set(con, _UPTO, str(upto))
            read = upto
        elif now[1] < upto:
            con.execute(f"INSERT INTO {TABLE} {_rows(now[0], now[1], upto)}")
            _set(con, _UPTO, str(upto))
            read = upto - now[1]
        else:
            read = 0
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return read


def _set(con: duckdb.DuckDBPyConnection, key: str, value: str) -> None:
    con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, value])


def subjects_sql(kinds: Collection[str], subjects: str, upto: int) -> str:
    """A SELECT of the held records of ``kinds`` of the subjects in relation ``subjects``
    below rowid ``upto``, with ``row_id`` first and the columns of ``records`` the plan reads."""
    return f"""SELECT row_id, {COLUMNS} FROM {TABLE}
        WHERE row_id < {int(upto)} AND kind IN ({names_sql(kinds)})
          AND sid IN (SELECT sid FROM {subjects})"""
