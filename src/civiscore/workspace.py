"""A civiscore home opened for work: store, key, engine and the operations the CLI offers.

The CLI (and later the HTTP service) are thin layers over this; tests drive it directly.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from civiscore.decisions.check import Decision, check
from civiscore.engine.duckdb_engine import DuckDBEngine
from civiscore.engine.incremental import FULL_SCORE_SHARE, Update, records_seen
from civiscore.engine.plan import default_row
from civiscore.home import create_key, load_key
from civiscore.ids import pseudonym, subject_type
from civiscore.ingest.run import IngestSummary, ingest_file
from civiscore.rights.explain import Explanation, explain
from civiscore.rulebook import registry
from civiscore.rulebook.load import demo_rulebook_path, load
from civiscore.rulebook.model import Rulebook
from civiscore.store import snapshots
from civiscore.store.base import Snapshot
from civiscore.store.duckdb_store import DuckDBStore, first_row
from civiscore.timeutil import iso_local, now_local


@dataclass(frozen=True)
class InitResult:
    home: Path
    key_file: Path
    key_created: bool
    rulebook_version: str
    rulebook_published: bool


class Workspace:
    def __init__(self, home: Path, store: DuckDBStore, key: bytes):
        self.home = home
        self.store = store
        self.key = key
        self.engine = DuckDBEngine(store)

    @classmethod
    def init(cls, home: Path, rulebook: Path | None = None) -> tuple[Workspace, InitResult]:
        """Create the store and key if absent and publish the rulebook (default: the demo)."""
        source = rulebook or demo_rulebook_path()
        load(source)  # refuse a bad rulebook before anything is created
        store = DuckDBStore.create(home)
        try:
            key_file, created = create_key(home)
            rb, published = registry.publish(store, source, now_local())
            ws = cls(home, store, load_key(home))
        except BaseException:
            store.close()
            raise
        return ws, InitResult(home, key_file, created, rb.version, published)

    @classmethod
    def open(cls, home: Path, *, read_only: bool = False) -> Workspace:
        store = DuckDBStore.open(home, read_only=read_only)
        return cls(home, store, load_key(home))

    def close(self) -> None:
        self.store.close()

    # -- subjects ----------------------------------------------------------------------------

    def sid_of(self, raw_id: str) -> int | None:
        """The store's subject number for a raw ID (validated; raises InvalidSubjectId)."""
        subject_type(raw_id)
        return self.store.sid_for(pseudonym(self.key, raw_id))

    # -- operations --------------------------------------------------------------------------

    def ingest(
        self,
        department: str,
        path: Path,
        *,
        received_at: dt.datetime | None = None,
        progress: Callable[[int, int], None] | None = None,
        batch_rows: int | None = None,
        on_phase: Callable[[str], None] | None = None,
    ) -> IngestSummary:
        received = received_at or now_local()
        rb = registry.in_force(self.store, received)
        return ingest_file(
            self.store,
            rb,
            department,
            path,
            self.key,
            home=self.home,
            received_at=received,
            progress=progress,
            batch_rows=batch_rows,
            on_phase=on_phase,
        )

    def rulebook_at(self, at: dt.datetime) -> Rulebook:
        return registry.in_force(self.store, at)

    def score(self, at: dt.datetime, known_at: dt.datetime) -> Snapshot:
        return self.engine.score(self.rulebook_at(at), at, known_at)

    def score_on_spark(
        self,
        at: dt.datetime,
        known_at: dt.datetime,
        *,
        master: str | None = None,
        parquet_dir: Path | None = None,
    ) -> Snapshot:
        """Score the population on Spark and store the snapshot, as :meth:`score` would.

        The store's records and subjects are written as Parquet to ``parquet_dir`` (default
        ``<home>/parquet``; on a cluster, a directory every worker mounts at the same path),
        scored by :class:`civiscore.engine.spark_engine.SparkEngine` from the same plan, and
        the result written to the store as an ordinary snapshot. Needs the spark extra and
        Java (:func:`civiscore.engine.spark_runtime.why_no_spark`).

        Args:
            at: T.
            known_at: K.
            master: A Spark master URL; None for local mode on every core.
            parquet_dir: Where the Parquet input goes.
        """
        # Imported here: pyspark is an optional extra, and starting it costs seconds.
        from civiscore.engine.spark_engine import SparkEngine, export_store, spark_session

        rb = self.rulebook_at(at)
        # Counted before the export reads the records: the watermark for --incremental.
        seen = records_seen(self.store.con)
        records, subjects, firsts = export_store(
            self.store.con, parquet_dir or self.home / "parquet"
        )
        with spark_session(master) as spark:
            rows, population = SparkEngine(spark, records, subjects, firsts).score_arrow(
                rb, at, known_at
            )
        return self.engine.store_snapshot(rb, at, known_at, rows, seen, subjects=population)

    def score_incremental(
        self, at: dt.datetime, known_at: dt.datetime, *, full_share: float | None = FULL_SCORE_SHARE
    ) -> Update:
        """Bring the latest snapshot forward to (at, known_at), or score everyone and say why."""
        latest = self.store.latest_snapshot()
        return self.engine.update(self.rulebook_at(at), latest, at, known_at, full_share=full_share)

    def check(self, raw_id: str, service: str, at: dt.datetime, known_at: dt.datetime) -> Decision:
        sid = self.sid_of(raw_id)
        return check(self.engine, self.rulebook_at(at), sid, service, at, known_at)

    def explain(self, raw_id: str, at: dt.datetime, known_at: dt.datetime) -> Explanation:
        sid = self.sid_of(raw_id)
        return explain(self.engine, self.rulebook_at(at), sid, at, known_at)

    def stats(self, snapshot: Snapshot) -> dict[str, Any]:
        """Aggregate counts of a snapshot: nothing about any one subject."""
        con = self.store.con
        sid_ = snapshot.snapshot_id
        rb = self.rulebook_at(snapshot.at)
        members = snapshots.chain(con, sid_)
        scores = snapshots.rows_sql("snapshot_scores", members)
        listed = snapshots.rows_sql("snapshot_listings", members)
        bands = dict(con.execute(f"SELECT band, count(*) FROM {scores} s GROUP BY band").fetchall())
        listings = dict(
            con.execute(
                f"SELECT listing, count(DISTINCT sid) FROM {listed} l GROUP BY listing"
            ).fetchall()
        )
        per_service: dict[str, int] = {}
        for svc_name, svc in rb.services.items():
            key = "restricts" if svc.kind == "restriction" else "grants"
            ids = [
                lst.id
                for lst in rb.listings
                if any(x.service == svc_name for x in getattr(lst, key))
            ]
            row = first_row(
                con,
                f"SELECT count(DISTINCT sid) FROM {listed} l WHERE list_contains(?, listing)",
                [ids],
            )
            per_service[svc_name] = int(row[0]) if row else 0
        stored = first_row(
            con, f"SELECT count(*), sum(score), count(*) FILTER (band_capped) FROM {scores} s"
        )
        assert stored is not None
        # The population's other members have no row: the base score, in its band, uncapped.
        others = snapshot.subjects - int(stored[0])
        base, band = default_row(rb)
        if others:
            bands[band] = bands.get(band, 0) + others
        total = (stored[1] or 0) + Decimal(str(base)) * others
        mean = float(total / snapshot.subjects) if snapshot.subjects else None
        return {
            "snapshot_id": sid_,
            "as_of": iso_local(snapshot.at),
            "known_at": iso_local(snapshot.known_at),
            "rulebook_version": snapshot.rulebook_version,
            "subjects": snapshot.subjects,
            "mean_score": round(mean, 2) if mean is not None else None,
            "band_capped_by_grave_sanction": int(stored[2]),
            "bands": {b.band: int(bands.get(b.band, 0)) for b in rb.bands},
            "listings": {lst.id: int(listings.get(lst.id, 0)) for lst in rb.listings},
            "restricted_per_service": {
                s: n for s, n in per_service.items() if rb.services[s].kind == "restriction"
            },
            "benefits_per_service": {
                s: n for s, n in per_service.items() if rb.services[s].kind == "benefit"
            },
        }
