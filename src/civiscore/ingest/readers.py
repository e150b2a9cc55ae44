"""Stream department files (CSV, JSON Lines, Parquet) as batches of string columns (and a
Parquet file's numeric quantity as a number, :data:`RAW_SCHEMA`).

Every batch carries each row's 1-based position in the file (``row``, header excluded) and,
for text formats, its physical line (``line``), so a rejected row can be found by a person.
Rows the parser cannot split at all come through with ``malformed`` set rather than being lost.
Memory stays bounded by the batch size whatever the file size.
"""

from __future__ import annotations

import csv
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from queue import Full, Queue

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

FIELDS = ("record_id", "subject_id", "kind", "occurred_at", "quantity", "reference", "retracts")
REQUIRED_COLUMNS = ("record_id", "subject_id", "kind", "occurred_at")
FORMATS = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}

BATCH_ROWS = 500_000
_BLOCK_BYTES = 16 << 20

# Every field as text, but a Parquet file's numeric quantity, which comes as a number
# (``quantity_value``; ``quantity`` is then null): printing 80 million numbers to parse them
# again cost the transport file about 7 s of CPU.
RAW_SCHEMA = pa.schema(
    [("row", pa.int64()), ("line", pa.int64()), ("malformed", pa.string())]
    + [(f, pa.string()) for f in FIELDS]
    + [("quantity_value", pa.float64())]
)


class FileError(ValueError):
    """A department file that cannot be read at all (as opposed to rows that are rejected)."""


@dataclass
class FileInfo:
    path: Path
    format: str
    columns: list[str]
    ignored_columns: list[str] = field(default_factory=list)
    size: int = 0


def detect_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise FileError(
            f"{path}: unknown file type {path.suffix!r}; civiscore reads "
            + ", ".join(sorted(FORMATS))
        )
    return fmt


def open_file(path: Path) -> FileInfo:
    """Check a file exists, has a known format and the required columns."""
    if not path.exists():
        raise FileError(f"{path}: no such file")
    fmt = detect_format(path)
    if fmt == "csv":
        with path.open(newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh), None)
        if header is None:
            raise FileError(f"{path}: line 1: the file is empty; a CSV needs a header row")
        columns = [h.strip().lower() for h in header]
    elif fmt == "parquet":
        try:
            columns = [c.lower() for c in pq.ParquetFile(path).schema_arrow.names]
        except (pa.ArrowInvalid, OSError) as exc:
            raise FileError(f"{path}: not a readable Parquet file ({exc})") from exc
    else:
        columns = list(FIELDS)  # JSON Lines: keys are looked up per line
    info = FileInfo(path, fmt, columns, size=path.stat().st_size)
    if fmt != "jsonl":
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            where = "line 1 (header)" if fmt == "csv" else "schema"
            raise FileError(
                f"{path}: {where}: missing column(s) {', '.join(missing)}; department files need "
                f"columns {', '.join(FIELDS)} (the last three may be empty); found: "
                f"{', '.join(columns) or 'none'}"
            )
        info.ignored_columns = [c for c in columns if c not in FIELDS]
    return info


Progress = Callable[[int], None]


def read_batches(
    info: FileInfo, batch_rows: int = BATCH_ROWS, progress: Progress | None = None
) -> Iterator[pa.Table]:
    """Yield batches with :data:`RAW_SCHEMA`; ``progress`` gets bytes consumed so far."""
    if info.format == "csv":
        yield from _csv_batches(info, batch_rows, progress)
    elif info.format == "jsonl":
        yield from _jsonl_batches(info, batch_rows, progress)
    else:
        yield from _parquet_batches(info, batch_rows, progress)


def read_ahead(batches: Iterator[pa.Table], depth: int = 2) -> Iterator[pa.Table]:
    """Yield ``batches`` while a thread reads the next ones.

    Parsing (pyarrow) and staging (DuckDB) both release the GIL, so on two cores reading the
    next batch overlaps with storing this one. An error in the reader is raised here.
    """
    done = object()
    queue: Queue[object] = Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        """Hand over ``item`` unless the consumer has stopped (then never block on it)."""
        while not stop.is_set():
            try:
                queue.put(item, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in batches:
                if not put(item):
                    return
            put(done)
        except BaseException as exc:  # handed to the consumer, which raises it
            put(exc)

    thread = threading.Thread(target=produce, name="civiscore-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = queue.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, pa.Table)
            yield item
    finally:
        stop.set()
        thread.join()


def raw_table(columns: dict[str, pa.Array], n: int) -> pa.Table:
    """``n`` rows in :data:`RAW_SCHEMA`; a column not in ``columns`` is all null."""
    return pa.Table.from_arrays(
        [columns[f.name] if f.name in columns else pa.nulls(n, f.type) for f in RAW_SCHEMA],
        schema=RAW_SCHEMA,
    )


def _standardise(columns: dict[str, pa.Array], n: int, row0: int, line: pa.Array) -> pa.Table:
    out: dict[str, pa.Array] = {
        "row": pa.array(np.arange(row0 + 1, row0 + n + 1, dtype=np.int64)),
        "line": line,
    }
    for f in FIELDS:
        col = columns.get(f)
        if col is None:
            continue
        if f == "quantity" and _numeric(col.type):
            out["quantity_value"] = col.cast(pa.float64())
        else:
            out[f] = col.cast(pa.string())
    return raw_table(out, n)


def _numeric(t: pa.DataType) -> bool:
    return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t))


def _csv_batches(info: FileInfo, batch_rows: int, progress: Progress | None) -> Iterator[pa.Table]:
    # Lines the parser cannot split (wrong number of fields) are kept, not dropped: they become
    # malformed rows with their physical line number.
    skipped: list[tuple[int, str]] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        skipped.append((row.number if row.number is not None else -1, row.text or ""))
        return "skip"

    names = info.columns
    read_opts = pacsv.ReadOptions(
        column_names=names, skip_rows=1, block_size=_BLOCK_BYTES, use_threads=False
    )
    parse_opts = pacsv.ParseOptions(invalid_row_handler=on_invalid)
    convert_opts = pacsv.ConvertOptions(
        column_types={c: pa.string() for c in names},
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
        include_columns=[c for c in names if c in FIELDS],
    )
    with info.path.open("rb") as fh:
        reader = pacsv.open_csv(
            fh, read_options=read_opts, parse_options=parse_opts, convert_options=convert_opts
        )
        parsed = 0  # rows parsed so far (excluding malformed ones)
        emitted_malformed = 0
        for chunk in _rechunk(iter(reader), batch_rows):
            n = chunk.num_rows
            # Physical line of the k-th parsed row: header is line 1, then skip malformed lines.
            skipped_lines = np.array(sorted(s for s, _ in skipped if s >= 0), dtype=np.int64)
            k = np.arange(parsed, parsed + n, dtype=np.int64) + 2
            shifted = skipped_lines - np.arange(len(skipped_lines), dtype=np.int64)
            lines = k + np.searchsorted(shifted, k, side="right")
            # Row number counts malformed rows too, so it is line - 1 for one-line rows.
            table = _standardise(
                {c: chunk.column(c) for c in chunk.column_names}, n, 0, pa.array(lines)
            )
            table = table.set_column(0, "row", pa.array(lines - 1))
            parsed += n
            yield table
            new_bad = skipped[emitted_malformed:]
            if new_bad:
                emitted_malformed = len(skipped)
                yield _malformed_table(new_bad, "the row does not have the header's columns")
            if progress:
                progress(fh.tell())
        new_bad = skipped[emitted_malformed:]
        if new_bad:
            yield _malformed_table(new_bad, "the row does not have the header's columns")


def _malformed_table(bad: list[tuple[int, str]], why: str) -> pa.Table:
    n = len(bad)
    cols: dict[str, pa.Array] = {
        "row": pa.array([ln - 1 if ln >= 0 else None for ln, _ in bad], pa.int64()),
        "line": pa.array([ln if ln >= 0 else None for ln, _ in bad], pa.int64()),
        "malformed": pa.array([why] * n, pa.string()),
    }
    return raw_table(cols, n)


def _rechunk(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    pending: list[pa.RecordBatch] = []
    count = 0
    for b in batches:
        pending.append(b)
        count += b.num_rows
        if count >= rows:
            yield pa.Table.from_batches(pending)
            pending, count = [], 0
    if pending:
        yield pa.Table.from_batches(pending)


_JSON_SQL = (
    "SELECT "
    + ", ".join(f"CASE WHEN ok THEN json_extract_string(j, '$.{f}') END AS {f}" for f in FIELDS)
    + ", CASE WHEN NOT ok THEN 'the line is not a JSON object' END AS malformed "
    "FROM (SELECT coalesce(json_type(j) = 'OBJECT', false) AS ok, j "
    "FROM (SELECT CASE WHEN json_valid(text) THEN text END AS j FROM lines_batch))"
)


def _jsonl_batches(
    info: FileInfo, batch_rows: int, progress: Progress | None
) -> Iterator[pa.Table]:
    # Read each line as one opaque string column, then parse JSON set-based in DuckDB, so one
    # bad line is one rejected row instead of a failed file, and line numbers stay exact.
    read_opts = pacsv.ReadOptions(column_names=["text"], block_size=_BLOCK_BYTES, use_threads=False)
    parse_opts = pacsv.ParseOptions(
        delimiter="\x1f", quote_char=False, escape_char=False, ignore_empty_lines=False
    )
    convert_opts = pacsv.ConvertOptions(
        column_types={"text": pa.string()}, strings_can_be_null=False
    )
    con = duckdb.connect()
    seen = 0
    with info.path.open("rb") as fh:
        reader = pacsv.open_csv(fh, read_opts, parse_opts, convert_opts)
        for chunk in _rechunk(iter(reader), batch_rows):
            n = chunk.num_rows
            lines = np.arange(seen + 1, seen + n + 1, dtype=np.int64)
            seen += n
            keep = pc.not_equal(pc.utf8_trim_whitespace(chunk.column("text")), "")
            chunk = chunk.append_column("line", pa.array(lines)).filter(keep)
            con.register("lines_batch", chunk)
            parsed = con.sql(_JSON_SQL).to_arrow_table()
            con.unregister("lines_batch")
            line_col = chunk.column("line").combine_chunks()
            table = _standardise({f: parsed.column(f) for f in FIELDS}, chunk.num_rows, 0, line_col)
            table = table.set_column(0, "row", line_col).set_column(
                2, "malformed", parsed.column("malformed")
            )
            yield table
            if progress:
                progress(fh.tell())
    con.close()


def _parquet_batches(
    info: FileInfo, batch_rows: int, progress: Progress | None
) -> Iterator[pa.Table]:
    pf = pq.ParquetFile(info.path)
    by_lower = {name.lower(): name for name in pf.schema_arrow.names}
    wanted = [by_lower[f] for f in FIELDS if f in by_lower]
    total = max(pf.metadata.num_rows, 1)
    done = 0
    for batch in pf.iter_batches(batch_size=batch_rows, columns=wanted):
        n = batch.num_rows
        cols = {name.lower(): batch.column(name) for name in batch.schema.names}
        yield _standardise(cols, n, done, pa.nulls(n, pa.int64()))
        done += n
        if progress:
            progress(int(info.size * done / total))
