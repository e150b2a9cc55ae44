"""Each subject's first records, so a full score finds its population without a pass over all.

A subject is in the population at (T, K) when one of its records was received by K and occurred
by T. Found with ``DISTINCT sid`` over every record, that was a fifth of a full score (1.2 s of
5.7 s at 50 million records). ``subject_firsts`` keeps, per subject, two of its records' (occurred,
received) pairs: one that occurred first and one that arrived first. Then at (T, K) a subject

* **is in** when either pair is within (T, K) (it is a real record);
* **is out** when its earliest occurrence is after T or its earliest receipt after K;
* is **undecided** otherwise (both pairs straddle (T, K) in opposite ways), and only those
  subjects' records are looked at.

Asked about the present, nobody is undecided. Like the locator (:mod:`civiscore.store.locator`),
the table covers the records below a watermark (``meta`` key ``subject_firsts_upto``), extended
by :func:`fold_new` after each transaction that stores records; rows above it (stored some other
way, or by a transaction whose fold has not run yet) are read by a scan of just that tail, so the
answer never depends on the fold. ``records`` is append-only: stores whose records are rewritten
(the policy lab's) never fold, and all their rows are tail.
"""

from __future__ import annotations

import datetime as dt

import duckdb

from civiscore.store import watermark
from civiscore.timeutil import sql_timestamp

TABLE = "subject_firsts"
_UPTO = "subject_firsts_upto"


def ensure(con: duckdb.DuckDBPyConnection) -> None:
    """Create the table if the store has none (stores made before it existed).

    ``first_occurred`` and ``its_received`` are one record's, the earliest to occur;
    ``first_received`` and ``its_occurred`` one record's, the earliest to arrive.
    """
    con.execute(
        f"""CREATE TABLE IF NOT EXISTS {TABLE} (
            sid BIGINT NOT NULL,
            first_occurred TIMESTAMP NOT NULL,
            its_received TIMESTAMP NOT NULL,
            first_received TIMESTAMP NOT NULL,
            its_occurred TIMESTAMP NOT NULL
        )"""
    )


def covered(con: duckdb.DuckDBPyConnection) -> int | None:
    """How many of the first records the table covers; None when the store has no table."""
    return watermark.covered(con, TABLE, _UPTO)


def _firsts_of(source: str) -> str:
    """Per subject of ``source`` (rows with this table's columns, or records), its firsts.

    Plain ``arg_min`` rather than a minimum of (occurred, received) pairs: twice as fast, and
    among records that occurred first any one's receipt will do (it is a real record's).
    """
    return f"""SELECT sid, min(first_occurred) AS first_occurred,
               arg_min(its_received, first_occurred) AS its_received,
               min(first_received) AS first_received,
               arg_min(its_occurred, first_received) AS its_occurred
        FROM {source} GROUP BY sid"""


def _of_records(upto: int) -> str:
    return f"""(SELECT sid, occurred_at AS first_occurred, received_at AS its_received,
                   received_at AS first_received, occurred_at AS its_occurred
            FROM records WHERE rowid >= {int(upto)})"""


def _new_firsts(con: duckdb.DuckDBPyConnection, upto: int) -> str:
    """Per subject, the firsts of the records from rowid ``upto`` on.

    Usually these are one department file's, all received at the same moment: then the
    first to occur is also a first to arrive, and a ``min`` per subject gives both pairs (3.4-3.7
    s for the 79 million records of Beijing's transport file, against 5.4-7.1 s for the general
    query; finding that every receipt is the same takes 0.02 s).
    """
    low, high = con.execute(
        f"SELECT min(received_at), max(received_at) FROM records WHERE rowid >= {int(upto)}"
    ).fetchall()[0]
    if low is None or low != high:
        return _firsts_of(_of_records(upto))
    return f"""SELECT sid, min(occurred_at) AS first_occurred, {sql_timestamp(low)} AS its_received,
               {sql_timestamp(low)} AS first_received, min(occurred_at) AS its_occurred
        FROM records WHERE rowid >= {int(upto)} GROUP BY sid"""


def fold_new(con: duckdb.DuckDBPyConnection) -> None:
    """Fold the records stored since the watermark into the table (see
    :func:`civiscore.store.watermark.extend`)."""

    def fold(upto: int) -> None:
        # Updating only the subjects whose firsts move beats rebuilding the table once it is
        # large: the folds of the 50-million-record city took 5.2 s this way, 7.1 s rebuilt.
        con.execute("CREATE OR REPLACE TEMP TABLE firsts_new AS " + _new_firsts(con, upto))
        con.execute(
            f"""UPDATE {TABLE} f
            SET first_occurred = least(f.first_occurred, n.first_occurred),
                its_received = CASE WHEN n.first_occurred < f.first_occurred
                                    THEN n.its_received ELSE f.its_received END,
                first_received = least(f.first_received, n.first_received),
                its_occurred = CASE WHEN n.first_received < f.first_received
                                    THEN n.its_occurred ELSE f.its_occurred END
            FROM firsts_new n
            WHERE f.sid = n.sid AND (n.first_occurred < f.first_occurred
                                     OR n.first_received < f.first_received)"""
        )
        con.execute(
            f"INSERT INTO {TABLE} SELECT n.* FROM firsts_new n ANTI JOIN {TABLE} f ON f.sid = n.sid"
        )
        con.execute("DROP TABLE firsts_new")

    watermark.extend(con, TABLE, _UPTO, fold)


def _bounds(at: dt.datetime, known_at: dt.datetime) -> tuple[str, str, str]:
    """(a record within (T, K), a subject known to be in, a subject known to be out)."""
    T, K = sql_timestamp(at), sql_timestamp(known_at)
    within = f"received_at <= {K} AND occurred_at <= {T}"
    known_in = (
        f"(first_occurred <= {T} AND its_received <= {K}) "
        f"OR (first_received <= {K} AND its_occurred <= {T})"
    )
    known_out = f"first_occurred > {T} OR first_received > {K}"
    return within, known_in, known_out


def undecided_sql(at: dt.datetime, known_at: dt.datetime) -> str:
    """A SELECT of the subjects the table cannot place at (at, known_at) by itself."""
    _, known_in, known_out = _bounds(at, known_at)
    return f"SELECT sid FROM {TABLE} WHERE NOT ({known_in}) AND NOT ({known_out})"


def population_from(
    at: dt.datetime,
    known_at: dt.datetime,
    records: str,
    *,
    upto: int | None,
    undecided: bool,
) -> str:
    """A SELECT of the population at (at, known_at) from this table and ``records``.

    ``upto``: the rowid from which ``records`` holds rows the table does not cover (None: it
    covers them all, as in the Parquet the Spark engine reads, which has no rowids);
    ``undecided``: whether any subject is (:func:`undecided_sql`), whose records are then read.
    Each engine counts those its own way; this SQL is the one both run.
    """
    within, known_in, _ = _bounds(at, known_at)
    inside = f"SELECT sid FROM {TABLE} WHERE {known_in}"
    others = []
    if upto is not None:
        others.append(f"SELECT sid FROM {records} WHERE rowid >= {int(upto)} AND {within}")
    if undecided:
        below = "" if upto is None else f"rowid < {int(upto)} AND "
        others.append(
            f"SELECT sid FROM {records} WHERE {below}{within} "
            f"AND sid IN ({undecided_sql(at, known_at)})"
        )
    if not others:
        return inside  # one row per subject already
    rest = "\nUNION ALL\n".join(others)
    return (
        f"{inside}\nUNION ALL\nSELECT DISTINCT x.sid FROM ({rest}) x "
        f"ANTI JOIN ({inside}) i ON i.sid = x.sid"
    )


def population_sql(
    con: duckdb.DuckDBPyConnection, records: str, at: dt.datetime, known_at: dt.datetime
) -> str | None:
    """A SELECT of the subjects in the population at (at, known_at); None without the table.

    ``records`` is the qualified name of the store's table.
    """
    upto = covered(con)
    if upto is None:
        return None
    total = int(con.execute(f"SELECT count(*) FROM {records}").fetchall()[0][0])
    undecided = bool(
        con.execute(f"SELECT count(*) FROM ({undecided_sql(at, known_at)})").fetchall()[0][0]
    )
    return population_from(
        at, known_at, records, upto=upto if total > upto else None, undecided=undecided
    )
