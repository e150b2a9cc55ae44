"""The record store's narrow interface.

Ingestion hands the store validated, pseudonymised batches; the engine reads records and writes
snapshots. A PostgreSQL or Parquet-backed store implements the same protocol.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa

# Columns of a validated batch handed to :meth:`RecordStore.write_batch`.
BATCH_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("line", pa.int64()),
        ("record_id", pa.string()),
        ("pseudonym", pa.string()),
        ("subject_type", pa.string()),
        ("kind", pa.string()),
        ("occurred_at", pa.timestamp("us")),
        ("quantity", pa.float64()),
        ("reference", pa.string()),
        ("retracts", pa.string()),
    ]
)


@dataclass(frozen=True)
class BatchResult:
    """What happened to one batch: rows stored, rows already stored, and conflicts.

    ``conflicts`` holds the rows (``BATCH_SCHEMA``) whose record_id was already stored (or seen
    earlier in the same file) with different content.
    """

    accepted: int
    duplicates: int
    conflicts: pa.Table
    sids: list[int] | None = None  # the batch's subjects, when asked for


@dataclass(frozen=True)
class StoredRulebook:
    version: str
    effective_from: dt.date
    loaded_at: dt.datetime
    source: str
    yaml: str
    sha256: str


@dataclass(frozen=True)
class Snapshot:
    snapshot_id: int
    rulebook_version: str
    at: dt.datetime
    known_at: dt.datetime
    created_at: dt.datetime
    subjects: int


class RecordStore(Protocol):
    def write_batch(
        self, department: str, batch: pa.Table, received_at: dt.datetime
    ) -> BatchResult: ...

    def sid_for(self, pseudonym: str) -> int | None: ...

    def save_rulebook(self, rb: StoredRulebook) -> None: ...

    def rulebooks(self) -> list[StoredRulebook]: ...

    def latest_snapshot(self, at: dt.datetime | None = None) -> Snapshot | None: ...
