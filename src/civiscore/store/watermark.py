"""Tables derived from ``records`` that cover its rows below a watermark.

``records`` is append-only, so rowids never move: a derived table (the subject locator, each
subject's first records) can be brought up to date by folding in just the rows stored since its
watermark, a ``meta`` entry holding how many rows it covers. Readers take the rows above the
watermark from ``records`` itself, so an answer never depends on whether the fold has run.
"""

from __future__ import annotations

from collections.abc import Callable

import duckdb


def covered(con: duckdb.DuckDBPyConnection, table: str, key: str) -> int | None:
    """How many of the first records ``table`` covers; None when the store has no such table."""
    exists = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'main' AND table_name = ?",
        [table],
    ).fetchall()
    if not exists[0][0]:
        return None
    row = con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchall()
    return int(row[0][0]) if row else 0


def extend(
    con: duckdb.DuckDBPyConnection, table: str, key: str, fold: Callable[[int], None]
) -> None:
    """Fold the rows stored since the watermark into ``table`` and move the watermark past them,
    in a transaction of its own; ``fold(upto)`` folds the rows whose rowid is at least ``upto``.

    Call it after the transaction that stored them has committed: until then DuckDB gives new
    rows provisional rowids. A crash in between leaves them above the watermark, where readers
    still find them and the next call folds them.
    """
    if covered(con, table, key) is None:
        return
    con.execute("BEGIN TRANSACTION")
    try:
        upto = covered(con, table, key) or 0
        total = int(con.execute("SELECT count(*) FROM records").fetchall()[0][0])
        if total > upto:
            fold(upto)
            con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, str(total)])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def drop_if_lacking(
    con: duckdb.DuckDBPyConnection, table: str, key: str, column: str, *also: str
) -> None:
    """Drop ``table`` (and the tables ``also``) and forget its watermark when it exists without
    ``column``: a derived table from an older civiscore, rebuilt from every record by its next
    fold once its owner creates it again."""
    columns = {
        str(r[0])
        for r in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE schema_name = 'main' "
            "AND table_name = ?",
            [table],
        ).fetchall()
    }
    if columns and column not in columns:
        for name in (table, *also):
            con.execute(f"DROP TABLE IF EXISTS {name}")
        con.execute("DELETE FROM meta WHERE key = ?", [key])
