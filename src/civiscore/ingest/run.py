"""Ingest one department file: read → validate → store, with a rejects file for the rest.

Each batch is stored in its own transaction. Re-running the same (or an overlapping) file adds
nothing twice: rows already stored count as duplicates. After a crash, re-running completes
the file. The rejects file is rewritten whole on each run, so it always describes the file
as it is now.
"""

from __future__ import annotations

import datetime as dt
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from civiscore.ingest.readers import BATCH_ROWS, FileError, open_file, read_batches
from civiscore.ingest.validate import REJECT_SCHEMA, validate
from civiscore.rulebook.model import Rulebook
from civiscore.store.duckdb_store import DuckDBStore
from civiscore.timeutil import now_local


@dataclass
class IngestSummary:
    department: str
    file: str
    rows: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    rejects_file: str | None = None
    ignored_columns: list[str] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {
            "department": self.department,
            "file": self.file,
            "rows": self.rows,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "rejects_file": self.rejects_file,
            "ignored_columns": self.ignored_columns,
            "rejected_by_field": dict(self.reasons),
        }


def rejects_path(home: Path, department: str, source: Path) -> Path:
    return home / "rejects" / department / f"{source.name}.rejects.csv"


def ingest_file(
    store: DuckDBStore,
    rulebook: Rulebook,
    department: str,
    path: Path,
    key: bytes,
    *,
    home: Path,
    received_at: dt.datetime | None = None,
    batch_rows: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> IngestSummary:
    """Ingest ``path`` for ``department``; ``progress(done, total)`` is in bytes.

    Rows are stored in transactions of ``batch_rows`` (default ``$CIVISCORE_BATCH_ROWS`` or
    500,000): memory stays bounded and a crash loses at most the batch in flight.
    """
    dep = rulebook.departments.get(department)
    if dep is None:
        raise FileError(
            f"unknown department {department!r}; the rulebook in force knows: "
            + ", ".join(rulebook.departments)
        )
    info = open_file(path)
    received = received_at or now_local()
    summary = IngestSummary(department, str(path), ignored_columns=info.ignored_columns)
    run = store.next_batch_id()
    store.start_run(run, department, str(path), received)
    out = rejects_path(home, department, path)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    vcon = duckdb.connect()
    rows_per_batch = batch_rows or int(os.environ.get("CIVISCORE_BATCH_ROWS", BATCH_ROWS))

    def report(done: int) -> None:
        if progress:
            progress(done, info.size)

    with pacsv.CSVWriter(str(partial), REJECT_SCHEMA) as writer:
        for raw in read_batches(info, rows_per_batch, progress=report):
            summary.rows += raw.num_rows
            good, rejects = validate(vcon, raw, department, dep, key, received)
            result = store.write_batch(department, good, received, run)
            summary.accepted += result.accepted
            summary.duplicates += result.duplicates
            if result.conflicts.num_rows:
                rejects = _with_conflicts(rejects, result.conflicts, good)
            if rejects.num_rows:
                writer.write_table(rejects)
                summary.rejected += rejects.num_rows
                summary.reasons.update(
                    dict(zip(*_value_counts(rejects.column("field")), strict=True))
                )
    vcon.close()
    if summary.rejected:
        os.replace(partial, out)
        summary.rejects_file = str(out)
    else:
        partial.unlink()
        out.unlink(missing_ok=True)
    store.finish_run(
        run,
        rows=summary.rows,
        accepted=summary.accepted,
        duplicates=summary.duplicates,
        rejected=summary.rejected,
        rejects_file=summary.rejects_file,
        finished_at=now_local(),
    )
    report(info.size)
    return summary


def _value_counts(col: pa.ChunkedArray) -> tuple[list[str], list[int]]:
    counts = pc.value_counts(col.combine_chunks())
    return counts.field("values").to_pylist(), counts.field("counts").to_pylist()


def _with_conflicts(rejects: pa.Table, conflicts: pa.Table, good: pa.Table) -> pa.Table:
    """Add rows the store refused (same record_id, different content) to the rejects."""
    rows = conflicts.column("row")
    mask = pc.is_in(good.column("row"), value_set=rows.combine_chunks())
    bad = good.filter(mask)
    n = bad.num_rows
    extra = pa.table(
        {
            "row": bad.column("row"),
            "line": bad.column("line"),
            "field": pa.array(["record_id"] * n, pa.string()),
            "reason": pc.binary_join_element_wise(
                "record_id ",
                bad.column("record_id"),
                " is already stored with different content; records are never edited: send a "
                "new record with retracts = that record_id and, if needed, a replacement",
                "",
            ),
            "record_id": bad.column("record_id"),
            "subject_id_masked": pa.nulls(n, pa.string()),
            "kind": bad.column("kind"),
            "occurred_at": pc.cast(bad.column("occurred_at"), pa.string()),
            "quantity": pc.cast(bad.column("quantity"), pa.string()),
            "reference": bad.column("reference"),
            "retracts": bad.column("retracts"),
        },
        schema=REJECT_SCHEMA,
    )
    return pa.concat_tables([rejects, extra]).sort_by("row")
