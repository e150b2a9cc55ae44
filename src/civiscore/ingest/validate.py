"""Validate a batch of raw rows set-based: each row is accepted or rejected with a reason.

All checks are one SQL statement over the batch (no Python loop per row). The first failing
check names the row's field and says what to fix. Accepted rows leave with their subject ID
replaced by its keyed pseudonym; the raw ID goes no further.
"""

from __future__ import annotations

import datetime as dt

import duckdb
import pyarrow as pa

from civiscore.ids import id_types, pseudonym_sql
from civiscore.rulebook.model import Department
from civiscore.store.base import BATCH_SCHEMA
from civiscore.timeutil import sql_timestamp

REJECT_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("line", pa.int64()),
        ("field", pa.string()),
        ("reason", pa.string()),
        ("record_id", pa.string()),
        ("subject_id_masked", pa.string()),
        ("kind", pa.string()),
        ("occurred_at", pa.string()),
        ("quantity", pa.string()),
        ("reference", pa.string()),
        ("retracts", pa.string()),
    ]
)

_ISO_DATE = r"^\d{4}-\d{2}-\d{2}$"
_ISO_LOCAL = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?$"
_ISO_OFFSET = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}(:?\d{2})?)$"

# Offsets are converted to Shanghai wall time (UTC+8, no daylight saving since 1991).
_PARSE_TS = f"""CASE
  WHEN regexp_matches(occ, '{_ISO_DATE}') THEN try_cast(try_cast(occ AS DATE) AS TIMESTAMP)
  WHEN regexp_matches(occ, '{_ISO_LOCAL}') THEN try_cast(replace(occ, 'T', ' ') AS TIMESTAMP)
  WHEN regexp_matches(occ, '{_ISO_OFFSET}') THEN
    make_timestamp(epoch_us(try_cast(occ AS TIMESTAMPTZ)) + 28800000000)
END"""


def _q(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _catalogue_sql(dep: Department) -> str:
    rows = []
    for name, kind in dep.kinds.items():
        qty_required = kind.quantity is not None and kind.quantity.required
        unit = kind.quantity.unit if kind.quantity else ""
        rows.append(
            f"({_q(name)}, {str(qty_required).lower()}, {_q(unit)}, "
            f"{str(kind.reference == 'required').lower()}, "
            f"{str('person' in kind.subjects).lower()}, "
            f"{str('organisation' in kind.subjects).lower()})"
        )
    return (
        "SELECT * FROM (VALUES " + ", ".join(rows) + ") AS "
        "c(cat_kind, qty_required, qty_unit, ref_required, allows_person, allows_org)"
    )


def validate(
    con: duckdb.DuckDBPyConnection,
    raw: pa.Table,
    department: str,
    dep: Department,
    key: bytes,
    received_at: dt.datetime,
) -> tuple[pa.Table, pa.Table]:
    """Split a raw batch into (accepted rows in ``BATCH_SCHEMA``, rejects in ``REJECT_SCHEMA``)."""
    known = ", ".join(sorted(dep.kinds))
    dep_q = _q(department)
    checks: list[tuple[str, str, str]] = [
        ("malformed IS NOT NULL", "'line'", "malformed"),
        (
            "record_id IS NULL",
            "'record_id'",
            "'record_id is missing: give each record the department''s unique id for it'",
        ),
        (
            "subject_id IS NULL",
            "'subject_id'",
            "'subject_id is missing: give the resident ID or unified social credit code'",
        ),
        (
            "length(subject_id) <> 18",
            "'subject_id'",
            "'subject_id has ' || length(subject_id) || ' characters; resident IDs (GB 11643) and "
            "unified social credit codes (GB 32100) have 18'",
        ),
        (
            "subject_type IS NULL",
            "'subject_id'",
            "'subject_id fails the check digit of both a resident ID (GB 11643) and a unified "
            "social credit code (GB 32100); check it was copied correctly'",
        ),
        (
            "kind IS NULL",
            "'kind'",
            "'kind is missing: name the record kind, e.g. one of: "
            + known.replace("'", "''")
            + "'",
        ),
        (
            "cat_kind IS NULL",
            "'kind'",
            f"'unknown kind ''' || kind || ''' for department ' || {dep_q} || '; known kinds: "
            + known.replace("'", "''")
            + "'",
        ),
        (
            "subject_type = 'person' AND NOT allows_person",
            "'subject_id'",
            "'kind ''' || kind || ''' applies to organisations only, but subject_id is a "
            "resident ID'",
        ),
        (
            "subject_type = 'organisation' AND NOT allows_org",
            "'subject_id'",
            "'kind ''' || kind || ''' applies to residents only, but subject_id is a unified "
            "social credit code'",
        ),
        (
            "occ IS NULL",
            "'occurred_at'",
            "'occurred_at is missing: give the date (2024-03-05) or date-time of the fact'",
        ),
        (
            "ts IS NULL",
            "'occurred_at'",
            "'occurred_at ''' || occ || ''' is not an ISO 8601 date or date-time; write "
            "2024-03-05 or 2024-03-05T14:22:00 (Asia/Shanghai unless an offset is given)'",
        ),
        (
            f"ts > {sql_timestamp(received_at)}",
            "'occurred_at'",
            "'occurred_at ' || strftime(ts, '%Y-%m-%dT%H:%M:%S') || ' is in the future; records "
            "state facts that have happened'",
        ),
        (
            "qty IS NOT NULL AND qnum IS NULL",
            "'quantity'",
            "'quantity ''' || qty || ''' is not a number'",
        ),
        (
            "qnum IS NOT NULL AND (isnan(qnum) OR isinf(qnum))",
            "'quantity'",
            "'quantity must be a finite number'",
        ),
        ("qnum < 0", "'quantity'", "'quantity must be zero or more'"),
        (
            "qty_required AND qnum IS NULL",
            "'quantity'",
            "'kind ''' || kind || ''' needs a quantity (' || qty_unit || ')'",
        ),
        (
            "ref_required AND reference IS NULL",
            "'reference'",
            "'kind ''' || kind || ''' needs a reference: the number of the judgment or "
            "decision it rests on'",
        ),
        ("retracts = record_id", "'retracts'", "'a record cannot retract itself'"),
    ]
    field_case = "CASE " + " ".join(f"WHEN {c} THEN {f}" for c, f, _ in checks) + " END"
    reason_case = "CASE " + " ".join(f"WHEN {c} THEN {m}" for c, _, m in checks) + " END"
    # The ID checks run on a byte matrix (ids.id_types), not in SQL, where they were the
    # costliest part of validation; the ID is normalised by the same SQL as below first.
    con.register("raw_batch_ids", raw.select(["subject_id"]))
    try:
        normalised = con.sql(
            "SELECT nullif(upper(trim(subject_id)), '') AS s FROM raw_batch_ids"
        ).to_arrow_table()
    finally:
        con.unregister("raw_batch_ids")
    types = pa.array(id_types(normalised.column("s")))
    con.register("raw_batch", raw.append_column("id_type", types))
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE checked AS
        WITH n AS (
          SELECT row, line, malformed,
            nullif(trim(record_id), '') AS record_id,
            nullif(upper(trim(subject_id)), '') AS subject_id,
            nullif(trim(kind), '') AS kind,
            nullif(trim(occurred_at), '') AS occ,
            nullif(trim(quantity), '') AS qty,
            nullif(trim(reference), '') AS reference,
            nullif(trim(retracts), '') AS retracts,
            occurred_at AS raw_occ, id_type
          FROM raw_batch
        ), p AS (
          SELECT n.*, {_PARSE_TS} AS ts, try_cast(qty AS DOUBLE) AS qnum,
            CASE id_type WHEN 1 THEN 'person' WHEN 2 THEN 'organisation' END AS subject_type
          FROM n
        )
        SELECT r.*, c.*,
               {field_case} AS field, {reason_case} AS reason
        FROM p r LEFT JOIN ({_catalogue_sql(dep)}) c ON c.cat_kind = r.kind
        """
    )
    con.unregister("raw_batch")
    good = con.sql(
        f"""
        SELECT row, line, record_id, {pseudonym_sql(key, "subject_id")} AS pseudonym,
               subject_type, kind, ts AS occurred_at, qnum AS quantity, reference, retracts
        FROM checked WHERE field IS NULL ORDER BY row
        """
    ).to_arrow_table()
    rejects = con.sql(
        """
        SELECT row, line, field, reason, record_id,
          CASE WHEN subject_id IS NULL THEN NULL
               WHEN length(subject_id) >= 10
                 THEN left(subject_id, 6) || repeat('*', length(subject_id) - 10)
                      || right(subject_id, 4)
               ELSE repeat('*', length(subject_id)) END AS subject_id_masked,
          kind, raw_occ AS occurred_at, qty AS quantity, reference, retracts
        FROM checked WHERE field IS NOT NULL ORDER BY row
        """
    ).to_arrow_table()
    return good.cast(BATCH_SCHEMA), rejects.cast(REJECT_SCHEMA)


def mask_subject_id(raw: str) -> str:
    """The masked form used in rejects files: enough to find the row, not to identify anyone.

    >>> mask_subject_id("11010519491231002X")
    '110105********002X'
    """
    if len(raw) >= 10:
        return raw[:6] + "*" * (len(raw) - 10) + raw[-4:]
    return "*" * len(raw)
