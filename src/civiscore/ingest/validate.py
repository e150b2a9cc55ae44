"""Validate a file set-based: each row is accepted or rejected with a reason.

Raw rows are checked batch by batch as they are read, each batch in one SQL statement (no
Python loop per row), into a temporary table of every row with whether it was rejected (the
accepted ones are :data:`CHECKED`); the few rejected rows are kept as they came
(:class:`Stage`). Once the file is read, those are checked again for their field and reason,
into :data:`REJECTED`, and each distinct ID of an accepted row is pseudonymised once. The
first failing check names the row's field and says what to fix. The raw IDs stay in the
temporary tables that :func:`drop_stage` drops, and go no further: the store keeps only their
keyed pseudonyms, from :data:`IDS`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, cast

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from civiscore.ids import id_from_key_sql, id_types_and_keys, pseudonym_sql
from civiscore.ingest.readers import RAW_SCHEMA
from civiscore.rulebook.model import Department
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

# A date, or a local date-time: one pattern, because one regular expression per row instead of
# two (a date-time first failed the date's) parsed 27 million rows in 2.9 s instead of 3.6 s.
# A date cast to TIMESTAMP is its midnight, as before.
_ISO_LOCAL = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?$"
_ISO_OFFSET = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}(:?\d{2})?)$"

# Offsets are converted to Shanghai wall time (UTC+8, no daylight saving since 1991).
PARSE_ANY_TS = f"""CASE
  WHEN regexp_matches(occ, '{_ISO_LOCAL}') THEN try_cast(replace(occ, 'T', ' ') AS TIMESTAMP)
  WHEN regexp_matches(occ, '{_ISO_OFFSET}') THEN
    make_timestamp(epoch_us(try_cast(occ AS TIMESTAMPTZ)) + 28800000000)
END"""
# Nearly every record is written `2024-03-05T14:22:00`, which strptime reads without the regular
# expressions (5 million such values: 0.10 s of two threads against 0.34 s). strptime skips ASCII
# white space wherever it reads a number (` 024-…` is the year 24), so a value holding any goes
# the long way, as does any value strptime refuses: the fast path gives either NULL or the long
# way's answer (`test_the_fast_timestamp_path_agrees_with_the_long_way`).
_WHITE = " OR ".join(f"contains(occ, chr({c}))" for c in (32, 9, 10, 11, 12, 13))
PARSE_FAST_TS = (
    f"CASE WHEN length(occ) = 19 AND NOT ({_WHITE}) THEN try_strptime(occ, '%Y-%m-%dT%H:%M:%S') END"
)
_PARSE_TS = f"coalesce({PARSE_FAST_TS}, {PARSE_ANY_TS})"


def _q(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _catalogue_sql(dep: Department) -> str:
    rows = []
    for number, (name, kind) in enumerate(dep.kinds.items(), start=1):
        qty_required = kind.quantity is not None and kind.quantity.required
        unit = kind.quantity.unit if kind.quantity else ""
        rows.append(
            f"({_q(name)}, {number}, {str(qty_required).lower()}, {_q(unit)}, "
            f"{str(kind.reference == 'required').lower()}, "
            f"{str('person' in kind.subjects).lower()}, "
            f"{str('organisation' in kind.subjects).lower()})"
        )
    return (
        "SELECT * FROM (VALUES " + ", ".join(rows) + ") AS "
        "c(cat_kind, cat_no, qty_required, qty_unit, ref_required, allows_person, allows_org)"
    )


# Temp tables (and a view) of the connection that stages a file (one file at a time per
# connection): its checked rows, its accepted rows, its rejected rows and its distinct valid IDs.
CHECKED = "ingest_checked"
REJECTED = "ingest_rejected"
IDS = "ingest_ids"
# The column :data:`CHECKED` and :data:`IDS` join on: the ID as a number
# (:func:`civiscore.ids.id_types_and_keys`), as raw as the ID itself, and as temporary.
KEY = "id_key"
_STAGED = "ingest_staged"
_RAW = "ingest_raw_batch"
# The rejected rows as they came (a prepared batch's columns: the reader's, then what
# :func:`prepare` adds), until their reasons are found.
_RAW_REJECTED = "ingest_raw_rejected"
_SQL_TYPES = {pa.int64(): "BIGINT", pa.string(): "VARCHAR", pa.float64(): "DOUBLE"}
_RAW_COLUMNS = ", ".join(f"{f.name} {_SQL_TYPES[f.type]}" for f in RAW_SCHEMA)

# A checked row holds what the store reads, the type its ID's check digits gave, and whether
# it was rejected; :data:`CHECKED` is the accepted ones. A rejected row is also in
# :data:`REJECTED`, which names the ``field`` at fault and the ``reason`` and keeps the text
# the department sent, for the rejects file. Rejected rows are few: apart, the rejects file
# does not scan every accepted row for them (16 s at 115 million rows, spilled). A row's line
# is kept as its distance from the row's number (``line_gap``), which the readers fix per
# format (a CSV's line is its row + 1, a JSON Lines' its row, Parquet has none): one byte of
# the stage's row instead of eight. A reader that broke that would fail the stage's insert (a
# gap out of TINYINT's range), not store a wrong line.
_TABLES = f"""
CREATE OR REPLACE TEMP TABLE {_STAGED} (
  row BIGINT, line_gap TINYINT, record_id VARCHAR, {KEY} DECIMAL(38, 0), id_type TINYINT,
  kind_no USMALLINT, occurred_at TIMESTAMP, quantity DOUBLE, reference VARCHAR,
  retracts VARCHAR, rejected BOOLEAN);
CREATE OR REPLACE TEMP TABLE {REJECTED} (
  row BIGINT, line BIGINT, field VARCHAR, reason VARCHAR, record_id VARCHAR, subject_id VARCHAR,
  kind VARCHAR, occ_text VARCHAR, qty_text VARCHAR, reference VARCHAR, retracts VARCHAR);
"""
_CREATE_RAW_REJECTED = f"""CREATE OR REPLACE TEMP TABLE {_RAW_REJECTED} (
  {_RAW_COLUMNS}, id_type TINYINT, {KEY} DECIMAL(38, 0))"""


# What DuckDB's ``trim`` strips, and so what an ID is trimmed of before it is checked: the
# Unicode space separators (category Zs), among them the no-break space and the ideographic
# space Chinese input methods type; not tabs or line breaks.
SPACES = (
    "\u0020\u00a0\u1680" + "".join(chr(c) for c in range(0x2000, 0x200B)) + "\u202f\u205f\u3000"
)

# The text fields the checks trim (the ID is trimmed before, in :func:`prepare`). Trimming was
# a third of the checks' time (11.3 million rows of civil affairs staged in 2.8-3.1 s without
# it, 4.1-5.2 s with), and nearly every value needs none: :func:`prepare` finds, per batch, the
# fields where some value might, and only those are trimmed.
TRIMMED = frozenset(("record_id", "kind", "occurred_at", "quantity", "reference", "retracts"))
_TRIM_KEY = b"civiscore.trim"


def may_need_trim(column: pa.ChunkedArray | pa.Array) -> bool:
    """Whether trimming could change a value of a string column: whether some value begins or
    ends with a byte that is a control character, a space or not ASCII (every space separator
    but U+0020 is written with bytes above 127 in UTF-8).

    Two bytes a value are read, from the offsets, not the strings. A null or empty value reads
    its neighbours' bytes, which can only answer yes where no would do.
    """
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    for chunk in chunks:
        if len(chunk) == 0 or chunk.null_count == len(chunk):
            continue
        _, offsets_buffer, data_buffer = chunk.buffers()
        if data_buffer is None or data_buffer.size == 0:
            continue  # every value is empty
        width = np.int64 if pa.types.is_large_string(chunk.type) else np.int32
        offsets = cast(
            "npt.NDArray[np.signedinteger[Any]]", np.frombuffer(offsets_buffer, dtype=width)
        )[chunk.offset : chunk.offset + len(chunk) + 1]
        data = np.frombuffer(data_buffer, dtype=np.uint8)
        first = data.take(np.minimum(offsets[:-1], data.size - 1))
        last = data.take(offsets[1:] - 1)  # an empty first value reads the buffer's last byte
        # Bytes 33-126 are printable ASCII other than the space; the rest wrap to 94 and up.
        if ((first - np.uint8(33)) >= 94).any() or ((last - np.uint8(33)) >= 94).any():
            return True
    return False


def to_trim(batch: pa.Table) -> frozenset[str]:
    """The fields :func:`prepare` found might need trimming in ``batch``; every one of
    :data:`TRIMMED` for a batch it did not prepare."""
    found = (batch.schema.metadata or {}).get(_TRIM_KEY)
    if found is None:
        return TRIMMED
    return frozenset(found.decode().split(",")) - {""}


# Rejected rows, as they came, wait in memory up to this size, and beyond it in a temporary
# table. Appending each batch's few to a temporary table cost 5-10 ms a batch, and every 18th
# batch or so 1.5-2.2 s once the stage had spilled to disk: 20 s of the 196 s that the 115
# million rows of Beijing's civil affairs file took.
REJECTS_IN_MEMORY = 256 << 20


@dataclass
class Stage:
    """A file being staged on a connection (one at a time per connection).

    Its rows are checked (``checks``, :func:`checks_sql`) into temporary tables as they come;
    its rejected rows, as they came, wait in ``pending`` (up to ``in_memory`` bytes, then in a
    temporary table) until :func:`check_stage` finds their reasons.
    """

    con: duckdb.DuckDBPyConnection
    department: str
    dep: Department
    received_at: dt.datetime
    in_memory: int = REJECTS_IN_MEMORY
    staged: int = 0  # rows in the stage, so a batch's are those from this rowid on
    pending: list[pa.Table] = field(default_factory=list)
    pending_bytes: int = 0
    spilled: bool = False
    variants: dict[frozenset[str], str] = field(default_factory=dict)

    def checks(self, trim: frozenset[str] = TRIMMED) -> str:
        """The checks' SELECT (:func:`checks_sql`) trimming the columns ``trim`` names."""
        sql = self.variants.get(trim)
        if sql is None:
            sql = self.variants[trim] = checks_sql(
                self.department, self.dep, self.received_at, trim
            )
        return sql

    def keep(self, rows: pa.Table) -> None:
        """Keep rejected raw rows until their reasons are found."""
        self.pending.append(rows)
        self.pending_bytes += rows.nbytes
        if self.pending_bytes > self.in_memory:
            self.spill()

    def spill(self) -> None:
        """Move the rows waiting in memory to the temporary table, in one statement."""
        if not self.pending:
            return
        self.con.register(_RAW, pa.concat_tables(self.pending))
        try:
            self.con.execute(f"INSERT INTO {_RAW_REJECTED} BY NAME SELECT * FROM {_RAW}")
        finally:
            self.con.unregister(_RAW)
        self.pending, self.pending_bytes, self.spilled = [], 0, True


def create_stage(
    con: duckdb.DuckDBPyConnection,
    department: str,
    dep: Department,
    received_at: dt.datetime,
    in_memory: int = REJECTS_IN_MEMORY,
) -> Stage:
    """An empty stage in ``con`` for a file of ``department`` received at ``received_at``:
    temporary tables, which DuckDB spills to disk if it must.

    ``in_memory``: how many bytes of rejected rows may wait in memory (:class:`Stage`).
    """
    con.execute(_TABLES)
    con.execute(_CREATE_RAW_REJECTED)
    # The stage holds each kind as its number in the department's catalogue, decoded here: the
    # name (16 bytes and often 30 more) was a third of a staged row, and a large file's stage
    # spills to disk (115 million rows of civil affairs: about 10 GB of temporary files).
    names = "[" + ", ".join(_q(k) for k in dep.kinds) + "]"
    con.execute(
        f"""CREATE OR REPLACE TEMP VIEW {CHECKED} AS
        SELECT row, row + line_gap AS line, record_id, {KEY}, id_type, {names}[kind_no] AS kind,
               occurred_at, quantity, reference, retracts
        FROM {_STAGED} WHERE NOT rejected"""
    )
    return Stage(con, department, dep, received_at, in_memory)


def prepare(raw: pa.Table) -> pa.Table:
    """A batch of raw rows (``readers.RAW_SCHEMA``) ready for :func:`append_to_stage`: the ID
    trimmed of :data:`SPACES` and upper-cased (as DuckDB's ``trim`` and ``upper`` would), the
    type its check digits give (``id_type``) and, when valid, the ID as a number (:data:`KEY`;
    both by :func:`ids.id_types_and_keys`, on a numpy byte matrix), and in the schema's
    metadata the fields whose values might need trimming (:func:`may_need_trim`, :func:`to_trim`).

    Apart from :func:`append_to_stage`, so that a reader thread can do it while DuckDB stores
    the batch before (about 0.2 s a million rows).
    """
    ids = pc.utf8_upper(pc.utf8_trim(raw.column("subject_id"), SPACES))
    types, keys = id_types_and_keys(ids)
    batch = raw.set_column(raw.schema.get_field_index("subject_id"), "subject_id", ids)
    trim = ",".join(sorted(c for c in TRIMMED if may_need_trim(batch.column(c))))
    return (
        batch.append_column("id_type", pa.array(types, pa.int8()))
        .append_column(KEY, keys)
        .replace_schema_metadata({_TRIM_KEY: trim.encode()})
    )


def append_to_stage(stage: Stage, batch: pa.Table) -> None:
    """Check one :func:`prepare`-d batch of rows into :data:`CHECKED`. The batch's rejected
    rows are kept as they came, for :func:`check_stage` to find their reasons.

    Every check runs here, as the file is read, so that the file is copied once; only the
    reasons and the keyed pseudonyms wait for the whole file (:func:`check_stage`), so that the
    reasons' statement runs once, not once a batch, and each distinct ID is hashed once.
    """
    con = stage.con
    staged = stage.staged
    con.register(_RAW, batch)
    try:
        # Every row goes straight into the stage, with whether it was rejected; no reasons,
        # which DuckDB then does not compute. (Holding the checks in a table of their own and
        # splitting it took 3.9 s for 5.7 million rows, this 2.9 s.)
        con.execute(
            f"""INSERT INTO {_STAGED}
            SELECT row, line - row, record_id, {KEY}, id_type, cat_no, ts, qnum, reference,
                   retracts, field IS NOT NULL
            FROM ({stage.checks(to_trim(batch))})"""
        )
        stage.staged += batch.num_rows  # every row goes in
        rejected = con.sql(
            f"SELECT row FROM {_STAGED} WHERE rowid >= {staged} AND rejected"
        ).to_arrow_table()
    finally:
        con.unregister(_RAW)
    if not rejected.num_rows:
        return
    # `row` is unique in a batch but for malformed rows whose line is unknown (NULL), which are
    # all rejected. (Checking each batch's few rejected rows again for their reasons took 23 ms
    # a batch, 3.7 s of the transport file's 80 million rows; a semi-join of the batch with
    # them in DuckDB, 90 ms.)
    stage.keep(
        batch.filter(pc.is_in(batch.column("row"), rejected.column("row"), skip_nulls=False))
    )


def _find_reasons(stage: Stage) -> None:
    """Check the rejected rows again, for their field and reason, into :data:`REJECTED`."""
    con = stage.con
    if stage.spilled:
        stage.spill()
        con.execute(f"CREATE OR REPLACE TEMP VIEW {_RAW} AS SELECT * FROM {_RAW_REJECTED}")
    elif stage.pending:
        con.register(_RAW, pa.concat_tables(stage.pending))
    else:
        return
    try:
        con.execute(
            f"""INSERT INTO {REJECTED}
            SELECT row, line, field, reason, record_id, subject_id, kind, occ_text, qty_text,
                   reference, retracts
            FROM ({stage.checks()}) WHERE field IS NOT NULL"""
        )
    finally:
        if stage.spilled:
            con.execute(f"DROP VIEW IF EXISTS {_RAW}")
            con.execute(_CREATE_RAW_REJECTED)  # emptied; a DELETE took 1.5 s of 1.1 M rows
        else:
            con.unregister(_RAW)
        stage.pending, stage.pending_bytes, stage.spilled = [], 0, False


def drop_stage(stage: Stage) -> None:
    """Forget the staged file, raw IDs included."""
    con = stage.con
    stage.pending, stage.pending_bytes = [], 0
    con.execute(f"DROP VIEW IF EXISTS {CHECKED}")
    for name in (_STAGED, REJECTED, _RAW_REJECTED, IDS):
        con.execute(f"DROP TABLE IF EXISTS {name}")


def checks_sql(
    department: str,
    dep: Department,
    received_at: dt.datetime,
    trim: frozenset[str] = TRIMMED,
) -> str:
    """A SELECT of every check's outcome for a batch of a file of ``department`` received at
    ``received_at`` (:func:`append_to_stage`), trimming the fields ``trim`` names (of
    :data:`TRIMMED`; the others are known to need it in none of the batch's values).

    The first failing check names the row's ``field`` (NULL when the row is accepted), and its
    ``reason`` says what to fix.
    """
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
    # Raw strings trimmed (the ID was trimmed and upper-cased before, with its check digits);
    # ``raw_occ`` keeps occurred_at as sent where trimming changed it, for the rejects file.
    # Only rejected rows pay for a reason and keep their raw text.

    def trimmed(name: str) -> str:
        return f"trim({name})" if name in trim else name

    return f"""
        WITH s AS (
          SELECT row, line, malformed,
            nullif({trimmed("record_id")}, '') AS record_id,
            nullif(subject_id, '') AS subject_id, id_type, {KEY},
            CASE id_type WHEN 1 THEN 'person' WHEN 2 THEN 'organisation' END AS subject_type,
            nullif({trimmed("kind")}, '') AS kind,
            nullif({trimmed("occurred_at")}, '') AS occ,
            nullif({trimmed("quantity")}, '') AS qty, quantity_value,
            nullif({trimmed("reference")}, '') AS reference,
            nullif({trimmed("retracts")}, '') AS retracts,
            CASE WHEN occurred_at IS DISTINCT FROM nullif({trimmed("occurred_at")}, '')
                 THEN occurred_at END AS raw_occ
          FROM {_RAW}
        ), p AS (
          SELECT s.*, {_PARSE_TS} AS ts,
                 coalesce(quantity_value, try_cast(qty AS DOUBLE)) AS qnum
          FROM s
        ), f AS (
          SELECT r.*, c.*, {field_case} AS field
          FROM p r LEFT JOIN ({_catalogue_sql(dep)}) c ON c.cat_kind = r.kind
        )
        SELECT row, line, record_id, subject_id, {KEY}, id_type, kind, cat_no, ts, qnum,
               reference, retracts, field,
               CASE WHEN field IS NOT NULL THEN {reason_case} END AS reason,
               CASE WHEN field IS NOT NULL THEN coalesce(raw_occ, occ) END AS occ_text,
               CASE WHEN field IS NOT NULL
                    THEN coalesce(qty, CAST(quantity_value AS VARCHAR)) END AS qty_text
        FROM f
        """


def check_stage(stage: Stage, key: bytes) -> None:
    """Give each rejected row its field and reason (into :data:`REJECTED`) and pseudonymise
    each distinct ID of the accepted rows once (into :data:`IDS`), once the whole file is
    staged.

    A file names each subject many times; the keyed hash, the costliest step, runs once per
    distinct ID. :data:`IDS` has one row per ID (:data:`KEY`) with at least one accepted row,
    with its ``subject_type`` and ``pseudonym``. The rows are grouped by the ID's number, and
    the ID spelled from it again only for the hash, once per ID. (The number is a DECIMAL;
    DuckDB casts it to HUGEINT by way of text in a third of the time of a direct cast.)
    """
    _find_reasons(stage)
    stage.con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE {IDS} AS
        SELECT {KEY},
               CASE id_type WHEN 1 THEN 'person' WHEN 2 THEN 'organisation' END AS subject_type,
               {pseudonym_sql(key, id_from_key_sql("number"))} AS pseudonym
        FROM (SELECT {KEY}, CAST(CAST({KEY} AS VARCHAR) AS HUGEINT) AS number,
                     any_value(id_type) AS id_type
              FROM {CHECKED} GROUP BY {KEY})
        """
    )


def rejects_sql(conflicts: str | None = None) -> str:
    """The staged file's rejects in ``REJECT_SCHEMA`` columns, in file order.

    ``conflicts`` names a relation of accepted rows the store refused (a record_id already
    stored with other content), in ``BATCH_SCHEMA`` columns.
    """
    sql = f"""
        SELECT row, line, field, reason, record_id,
          CASE WHEN subject_id IS NULL THEN NULL
               WHEN length(subject_id) >= 10
                 THEN left(subject_id, 6) || repeat('*', length(subject_id) - 10)
                      || right(subject_id, 4)
               ELSE repeat('*', length(subject_id)) END AS subject_id_masked,
          kind, occ_text AS occurred_at, qty_text AS quantity, reference, retracts
        FROM {REJECTED}"""
    if conflicts is not None:
        sql += f"""
        UNION ALL
        SELECT row, line, 'record_id',
          'record_id ' || record_id || ' is already stored with different content; records '
          || 'are never edited: send a new record with retracts = that record_id and, if '
          || 'needed, a replacement',
          record_id, NULL, kind, CAST(occurred_at AS VARCHAR), CAST(quantity AS VARCHAR),
          reference, retracts
        FROM {conflicts}"""
    return sql + "\nORDER BY row"


def mask_subject_id(raw: str) -> str:
    """The masked form used in rejects files: enough to find the row, not to identify anyone.

    >>> mask_subject_id("11010519491231002X")
    '110105********002X'
    """
    if len(raw) >= 10:
        return raw[:6] + "*" * (len(raw) - 10) + raw[-4:]
    return "*" * len(raw)
